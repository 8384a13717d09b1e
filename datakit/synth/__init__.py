"""`tlx synth`: a synthetic CT cohort as real DICOM files, with a ground-truth file beside it.

    make_cohort.synth_cohort   the whole cohort: patients in parallel, the junk, cohort.json
    cohort.plan_patient        one patient's studies and series, every value from the seed
    write.write_patient        one patient's plan as DICOM files (pydicom)
    phantoms.phantom           the HU image of one slice of a body region
    jpeg_lossless.encode_sv1   JPEG lossless (process 14, SV1), which pydicom cannot encode

This file imports nothing, so the modules above import each other without a cycle.
"""
