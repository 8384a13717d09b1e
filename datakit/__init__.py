"""datakit: DICOM CT / NIfTI / image folders -> WebDataset shards with Parquet metadata."""
