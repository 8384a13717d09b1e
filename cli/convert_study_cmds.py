"""`tlx convert cxr | image-mask | pcam | npy-volumes | dicom-images`: the related studies' datasets.

Registered on the `tlx convert` group by cli.convert_cmds (register); each command only parses
options and calls its converter in datakit/convert/.
"""
from __future__ import annotations

import click

SECRET = click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
                      help="pseudonym secret for DICOM images (default: env TLX_SECRET)")
SC = click.option("--allow-secondary-capture", is_flag=True, default=None,
                  help="read X-rays stored as secondary captures (SIIM-ACR, CBIS-DDSM; their presets set it)")


def _range(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} must be two numbers, e.g. 0.55,0.85", param_hint="--lsr-range") from None
    return lo, hi


def register(convert, common, summary, csv) -> None:
    """Add the commands to the `convert` group; `common`, `summary`, `csv` are cli.convert_cmds' helpers."""

    @convert.command("cxr")
    @click.argument("sources", nargs=-1, type=click.Path(file_okay=False))
    @click.option("--preset", type=click.Choice(["chexpert", "mimic-cxr", "padchest", "nih"]),
                  help="the dataset's file layout (column maps, views, patients, official splits)")
    @click.option("--root", type=click.Path(file_okay=False), help="the dataset's folder")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
    @click.option("--merge", is_flag=True, help="merge the converted datasets SOURCES ([NAME=]DIR) into one superset")
    @click.option("--merge-labels", type=click.Choice(["intersection", "union"]), default="intersection",
                  show_default=True, help="--merge: the labels every source has, or all (absent ones missing)")
    @click.option("--labels", type=click.Path(dir_okay=False),
                  help="the preset's label file [default: found in --root]")
    @click.option("--test-labels", type=click.Path(dir_okay=False), help="chexpert: valid.csv (the test split)")
    @click.option("--metadata", type=click.Path(dir_okay=False), help="mimic-cxr: mimic-cxr-2.0.0-metadata.csv")
    @click.option("--split-file", type=click.Path(dir_okay=False), help="mimic-cxr: mimic-cxr-2.0.0-split.csv")
    @click.option("--test-list", type=click.Path(dir_okay=False), help="nih: test_list.txt")
    @click.option("--uncertain", type=click.Choice(["ones", "zeros", "lsr", "ignore"]), default="ignore",
                  show_default=True, help="uncertain (-1) labels in train: U-Ones, U-Zeros, label smoothing, missing")
    @click.option("--blank", type=click.Choice(["zeros", "ignore"]), default="zeros", show_default=True,
                  help="blank (not mentioned) labels: negative or missing")
    @click.option("--eval-uncertain", type=click.Choice(["ignore", "policy"]), default="ignore", show_default=True,
                  help="uncertain labels in val and test: missing, or as --uncertain")
    @click.option("--lsr-range", help="--uncertain lsr: the uniform range [default: 0.55,0.85]")
    @click.option("--views", default="frontal", show_default=True,
                  help="frontal, lateral, all, or view codes (PA,AP)")
    @click.option("--classes", help="labels kept, in this order [default: the source's]")
    @click.option("--rename", multiple=True, help="OLD=NEW, a label's name (repeatable)")
    @click.option("--val", default=0.1, show_default=True, help="val patients drawn where the source has no val split")
    @click.option("--test", default=0.1, show_default=True, help="test patients drawn where the source has none")
    @click.option("--size", default=256, show_default=True, help="images are padded square and resized to this")
    @click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
    @common
    def cxr(sources, preset, root, out, merge, merge_labels, labels, test_labels, metadata, split_file, test_list,
            uncertain, blank, eval_uncertain, lsr_range, views, classes, rename, val, test, size, channels, seed,
            samples_per_shard, workers, resume):
        """Chest X-ray datasets with label policies (CheXpert, MIMIC-CXR, PadChest, ChestX-ray14), or a merged superset.

        \b
        Example:
          tlx convert cxr --preset chexpert --root CheXpert-v1.0-small --out chexpert/ --uncertain ones
          tlx convert cxr --preset mimic-cxr --root mimic-cxr-jpg/2.0.0 --out mimic/ --uncertain lsr
          tlx convert cxr --merge chexpert/ mimic/ nih/ padchest/ --out superset/
        """
        from tlxcore.progress import drawn
        if merge:
            if preset or root:
                raise click.UsageError("--merge takes converted datasets as arguments; drop --preset and --root")
            from datakit.convert.cxr_merge import CxrMergeOptions, merge_cxr
            with drawn() as progress:
                manifest = merge_cxr(CxrMergeOptions(
                    sources=sources, out=out, labels=merge_labels, classes=csv(classes),
                    samples_per_shard=samples_per_shard, seed=seed, workers=workers, resume=resume), progress)
            return summary(manifest, out)
        if sources or not preset or not root:
            raise click.UsageError("give --preset and --root (or --merge DIR DIR ...)")
        from datakit.convert.cxr import LSR_RANGE, CxrOptions, convert_cxr
        with drawn() as progress:
            manifest = convert_cxr(CxrOptions(
                root=root, out=out, preset=preset, labels=labels, test_labels=test_labels, metadata=metadata,
                split_file=split_file, test_list=test_list, uncertain=uncertain, blank=blank,
                eval_uncertain=eval_uncertain, lsr_range=_range(lsr_range) or LSR_RANGE, views=views,
                classes=csv(classes), rename=tuple(rename), val=val, test=test, size=size, channels=int(channels),
                seed=seed, samples_per_shard=samples_per_shard, workers=workers, resume=resume), progress)
        summary(manifest, out)

    @convert.command("image-mask")
    @click.option("--root", required=True, type=click.Path(file_okay=False),
                  help="folder below which the patterns look")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
    @click.option("--preset", type=click.Choice(["siim-acr", "montgomery", "drive"]))
    @click.option("--image-pattern", help="images below --root: {id}, {split}, * and **/ (e.g. 'CXR_png/{id}.png')")
    @click.option("--mask", "masks", multiple=True,
                  help="[CLASS=]PATTERN of mask images (repeatable; one class's are united)")
    @click.option("--fov-pattern", help="field-of-view masks, kept as member fov.zst")
    @click.option("--rle", type=click.Path(dir_okay=False), help="CSV of run-length masks instead of mask images")
    @click.option("--rle-id-col", default="ImageId", show_default=True)
    @click.option("--rle-col", default="EncodedPixels", show_default=True)
    @click.option("--rle-class", help="class of the RLE masks [default: foreground; siim-acr: pneumothorax]")
    @click.option("--rle-form", type=click.Choice(["relative", "absolute"]),
                  help="relative: SIIM-ACR's offsets from the previous run; absolute: 1-based starts")
    @click.option("--rle-order", type=click.Choice(["column", "row"]), default="column", show_default=True)
    @click.option("--label-map", help="values of one multi-class mask image: 0:background,1:liver,2:tumor")
    @click.option("--split-map", help="{split} values -> splits, e.g. training=train,test=test")
    @click.option("--patient-regex", help="regex whose group `patient` (or 1) is the patient in an image id")
    @click.option("--patients", type=click.Path(dir_okay=False),
                  help="CSV naming each image's patient (columns --patients-id-col, --patient-col)")
    @click.option("--patients-id-col", default="id", show_default=True, help="--patients: the image id column")
    @click.option("--patient-col", default="patient", show_default=True, help="--patients: the patient column")
    @SECRET
    @SC
    @click.option("--channels", type=click.Choice(["1", "3"]), help="gray or RGB [default: 1; drive: 3]")
    @click.option("--size", default=256, show_default=True)
    @click.option("--val", default=0.1, show_default=True, help="val patients (fraction or number)")
    @click.option("--test", default=0.1, show_default=True, help="test patients where the source has no test split")
    @common
    def image_mask(root, out, preset, image_pattern, masks, fov_pattern, rle, rle_id_col, rle_col, rle_class, rle_form,
                   rle_order, label_map, split_map, patient_regex, patients, patients_id_col, patient_col,
                   secret_file, allow_secondary_capture, channels, size,
                   val, test, seed, samples_per_shard, workers, resume):
        """2-D images + masks (mask images, unions, RLE in a CSV, a field of view) -> segmentation shards.

        \b
        Example:
          tlx convert image-mask --root siim/ --preset siim-acr --out siim-ptx/ --secret-file key
          tlx convert image-mask --root MontgomerySet --preset montgomery --out montgomery/
          tlx convert image-mask --root DRIVE --preset drive --out drive/
        """
        from datakit.convert.image_mask import ImageMaskOptions, convert_image_mask
        from tlxcore.progress import drawn
        with drawn() as progress:
            manifest = convert_image_mask(ImageMaskOptions(
                root=root, out=out, preset=preset, image_pattern=image_pattern, mask_patterns=tuple(masks) or None,
                fov_pattern=fov_pattern, rle=rle, rle_id_col=rle_id_col, rle_col=rle_col, rle_class=rle_class,
                rle_form=rle_form, rle_order=rle_order, label_map=label_map, split_map=split_map,
                patient_regex=patient_regex, patients=patients, patients_id_col=patients_id_col,
                patient_col=patient_col, secret=secret_file, allow_secondary_capture=allow_secondary_capture,
                channels=int(channels) if channels else None, size=size, val=val, test=test, seed=seed,
                samples_per_shard=samples_per_shard, workers=workers, resume=resume), progress)
        summary(manifest, out)

    @convert.command("pcam")
    @click.option("--root", required=True, type=click.Path(file_okay=False), help="folder of PCam's .h5 files")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
    @click.option("--meta", type=click.Choice(["auto", "none"]), default="auto", show_default=True,
                  help="read the _meta.csv files (slides as patients) when present")
    @click.option("--size", default=96, show_default=True)
    @click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
    @common
    def pcam(root, out, meta, size, channels, seed, samples_per_shard, workers, resume):
        """PatchCamelyon HDF5 (needs h5py: pip install 'tlx[hdf5]') -> image-classification shards, official splits."""
        from datakit.convert.pcam import PcamOptions, convert_pcam
        from tlxcore.progress import drawn
        with drawn() as progress:
            manifest = convert_pcam(PcamOptions(root=root, out=out, meta=meta, size=size, channels=int(channels),
                                                seed=seed, samples_per_shard=samples_per_shard, workers=workers,
                                                resume=resume), progress)
        summary(manifest, out)

    @convert.command("npy-volumes")
    @click.option("--root", required=True, type=click.Path(file_okay=False), help="MRNet-v1.0 folder")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
    @click.option("--plane", type=click.Choice(["sagittal", "coronal", "axial"]), default="sagittal", show_default=True)
    @click.option("--slices", default="center", show_default=True, help="center, center3 or offsets (-2,0,2)")
    @click.option("--labels", default="abnormal,acl,meniscus", show_default=True, help="<part>-<label>.csv files")
    @click.option("--train-part", default="train", show_default=True, help="part split into train and val")
    @click.option("--test-part", default="valid", show_default=True, help="part used as the test split")
    @click.option("--val", default=0.1, show_default=True, help="val exams (fraction or number)")
    @click.option("--size", default=256, show_default=True)
    @common
    def npy_volumes(root, out, plane, slices, labels, train_part, test_part, val, size, seed, samples_per_shard,
                    workers, resume):
        """MRNet-style .npy volumes -> one image of chosen slices per exam, multi-label shards."""
        from datakit.convert.npy_volumes import NpyVolumeOptions, convert_npy_volumes
        from tlxcore.progress import drawn
        with drawn() as progress:
            manifest = convert_npy_volumes(NpyVolumeOptions(
                root=root, out=out, plane=plane, slices=slices, labels=csv(labels), train_part=train_part,
                test_part=test_part, val=val, size=size, seed=seed, samples_per_shard=samples_per_shard,
                workers=workers, resume=resume), progress)
        summary(manifest, out)

    @convert.command("dicom-images")
    @click.option("--root", required=True, type=click.Path(file_okay=False), help="folder of DICOM files (any depth)")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
    @click.option("--labels", multiple=True, type=click.Path(dir_okay=False),
                  help="label CSV of the train split (repeatable)")
    @click.option("--test-labels", multiple=True, type=click.Path(dir_okay=False), help="label CSV of the test split")
    @click.option("--preset", type=click.Choice(["cbis-ddsm"]))
    @click.option("--image-col", help="CSV column naming the image")
    @click.option("--label-col", help="CSV column of the class")
    @click.option("--patient-col", help="CSV column of the patient [default: the file's PatientID]")
    @click.option("--match", type=click.Choice(["path", "series", "study", "sop"]),
                  help="how a CSV value names its file [default: path; cbis-ddsm: series]")
    @click.option("--label-map", multiple=True, help="OLD=NEW class names (repeatable)")
    @click.option("--classes", help="class order [default: sorted]")
    @click.option("--conflicts", type=click.Choice(["refuse", "last-class"]),
                  help="rows of one image that disagree [default: refuse; cbis-ddsm: last-class]")
    @SECRET
    @SC
    @click.option("--size", default=512, show_default=True)
    @click.option("--val", default=0.1, show_default=True, help="val patients drawn from the train split")
    @common
    def dicom_images(root, out, labels, test_labels, preset, image_col, label_col, patient_col, match, label_map,
                     classes, conflicts, secret_file, allow_secondary_capture, size, val, seed, samples_per_shard,
                     workers, resume):
        """X-ray / mammography DICOM + label CSVs (CBIS-DDSM) -> image-classification shards with pseudonyms.

        \b
        Example:
          tlx convert dicom-images --root CBIS-DDSM --preset cbis-ddsm --out cbis/ --secret-file key \\
              --labels mass_case_description_train_set.csv --test-labels mass_case_description_test_set.csv
        """
        from datakit.convert.dicom_images import DicomImagesOptions, convert_dicom_images
        from tlxcore.progress import drawn
        with drawn() as progress:
            manifest = convert_dicom_images(DicomImagesOptions(
                root=root, out=out, labels=tuple(labels), test_labels=tuple(test_labels), preset=preset,
                image_col=image_col, label_col=label_col, patient_col=patient_col, match=match,
                label_map=tuple(label_map) or None, classes=csv(classes), conflicts=conflicts, secret=secret_file,
                allow_secondary_capture=allow_secondary_capture, size=size, val=val, seed=seed,
                samples_per_shard=samples_per_shard, workers=workers, resume=resume), progress)
        summary(manifest, out)
