"""Converters of public datasets into tlx datasets (docs/dataset-format.md, kinds in docs/finetune.md).

    nifti_seg.convert_nifti_seg      NIfTI volumes + label volumes -> kind "segmentation"
    image_folder.convert_image_folder images + label CSV            -> kind "multilabel" (or "image-classification")
    class_folder.convert_class_folder class-per-folder images       -> kind "image-classification" (jpg/cls)

All three find their inputs, split them (by patient where the source says), and hand
per-job staging functions to builder.DatasetBuilder, which writes shards, parquet
files and the manifest.
"""
