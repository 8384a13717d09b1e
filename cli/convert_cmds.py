"""`tlx convert ...`: public datasets for the downstream tasks -> tlx shards (datakit/convert/)."""
from __future__ import annotations

import click

from cli.datakit_cmds import WORKERS, resume_option

_SPLIT_HELP = "a fraction of the patients (< 1) or a number of patients (>= 1)"


def _csv(value: str | None, cast=str, option: str | None = None) -> tuple | None:
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip()) if value else None
    except ValueError:
        raise click.BadParameter(f"{value!r} must be a comma list of whole numbers, e.g. 1,2,0",
                                 param_hint=option) from None


def _common(f):
    """Options every converter takes (applied bottom-up, so they list last in --help)."""
    for option in reversed([
        click.option("--seed", default=0, show_default=True, help="seed of the split and of the shard shuffle"),
        click.option("--samples-per-shard", default=1000, show_default=True),
        WORKERS,
        resume_option("tlx convert"),
    ]):
        f = option(f)
    return f


def _summary(manifest: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out}: {manifest['kind']}, {len(manifest['classes'])} classes")
    for col in ("split", "samples", "patients", "shards"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, c in manifest["splits"].items():
        table.add_row(split, str(c["samples"]), str(c["patients"]), str(c["shards"]))
    Console().print(table)


@click.group()
def convert() -> None:
    """Convert public datasets of the downstream tasks into tlx shards.

    \b
    Example:
      tlx convert nifti-seg --images imagesTr/ --labels labelsTr/ --out lits/ --preset lits
      tlx convert image-folder --root chestxray/images --labels Data_Entry_2017.csv --out cxr/
      tlx convert class-folder --root imagenet/train --eval-root imagenet/val --out in1k/
      tlx convert cxr --preset chexpert --root CheXpert-v1.0-small --out chexpert/ --uncertain ones
      tlx convert image-mask --root MontgomerySet --preset montgomery --out montgomery/
    """


@convert.command("nifti-seg")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="folder of image volumes")
@click.option("--labels", type=click.Path(file_okay=False), help="folder of label volumes [default: --images]")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
@click.option("--preset", type=click.Choice(["lits", "brats"]),
              help="file layout, classes and defaults of LiTS or BraTS")
@click.option("--image-pattern", help="image file below --images; {case} and {modality} are filled in")
@click.option("--label-pattern", help="label file below --labels; {case} marks the case id")
@click.option("--modalities", help="comma list filling {modality}, in channel order (e.g. t1,t1ce,flair)")
@click.option("--channels", help="channels kept from 4D images, in order (e.g. 1,2,0)")
@click.option("--label-map", help="label value -> class, e.g. 0:background,1:liver,2:tumor")
@click.option("--classes", help="shorthand for --label-map: value i is the i-th name")
@click.option("--size", default=256, show_default=True, help="slices are padded square and resized to this")
@click.option("--dtype", type=click.Choice(["int16", "float32"]), help="stored image type [default: int16]")
@click.option("--drop-empty", type=click.Choice(["none", "image", "mask"]),
              help="drop slices with a constant image (no anatomy) or an empty mask [default: preset's, else none]")
@click.option("--val", type=float, help=f"validation patients: {_SPLIT_HELP} [default: 0.1; brats 30]")
@click.option("--test", type=float, help=f"test patients: {_SPLIT_HELP} [default: 0.1; brats 30]")
@click.option("--patient-regex", help="regex whose group `patient` (or 1) is the patient in a case id")
@_common
def nifti_seg(images, labels, out, preset, image_pattern, label_pattern, modalities, channels, label_map, classes,
              size, dtype, drop_empty, val, test, patient_regex, seed, samples_per_shard, workers, resume):
    """NIfTI volumes + label volumes (LiTS, BraTS, MSD layouts) -> 2D slice shards with masks, split by patient.

    \b
    Example:
      tlx convert nifti-seg --images LiTS/ --out lits/ --preset lits
      tlx convert nifti-seg --images BraTS2020_TrainingData/ --out brats/ --preset brats
      tlx convert nifti-seg --images imagesTr/ --labels labelsTr/ --out kidney/ --classes background,kidney,tumor
    """
    from datakit.convert.nifti_seg import NiftiSegOptions, convert_nifti_seg
    from tlxcore.progress import drawn

    with drawn() as progress:
        manifest = convert_nifti_seg(NiftiSegOptions(
            images=images, labels=labels, out=out, preset=preset, image_pattern=image_pattern,
            label_pattern=label_pattern, modalities=_csv(modalities), channels=_csv(channels, int, "--channels"),
            label_map=label_map, classes=_csv(classes), size=size, dtype=dtype, drop_empty=drop_empty, val=val,
            test=test, seed=seed, patient_regex=patient_regex, samples_per_shard=samples_per_shard, workers=workers,
            resume=resume), progress)
    _summary(manifest, out)


@convert.command("image-folder")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="folder holding the images (any depth)")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="CSV with one row per image")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
@click.option("--image-col", default="Image Index", show_default=True, help="CSV column naming the image file")
@click.option("--label-col", default="Finding Labels", show_default=True, help="CSV column of separated labels")
@click.option("--label-sep", default="|", show_default=True)
@click.option("--label-cols", help="instead of --label-col: one 0/1 column per label, comma list")
@click.option("--none-label", default="No Finding", show_default=True, help="the label meaning 'none of them'")
@click.option("--patient-col", default="Patient ID", show_default=True,
              help="CSV column of the patient; 'none' when the source has none (split per image)")
@click.option("--classes", help="label order (and the labels allowed) [default: sorted labels found]")
@click.option("--single-label", is_flag=True, help="one class per image (cls member) instead of multi-hot labels")
@click.option("--test-list", type=click.Path(dir_okay=False), help="file of image names forming the test split")
@click.option("--val", default=0.1, show_default=True, help=f"validation patients: {_SPLIT_HELP}")
@click.option("--test", default=0.1, show_default=True, help=f"test patients (without --test-list): {_SPLIT_HELP}")
@click.option("--size", default=256, show_default=True, help="images are padded square and resized to this")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True, help="gray or RGB")
@_common
def image_folder(root, labels, out, image_col, label_col, label_sep, label_cols, none_label, patient_col, classes,
                 single_label, test_list, val, test, size, channels, seed, samples_per_shard, workers, resume):
    """PNG/JPEG images + a label CSV (ChestX-ray8 style) -> multi-label shards, split by patient.

    \b
    Example:
      tlx convert image-folder --root chestxray/images --labels Data_Entry_2017.csv \\
          --test-list test_list.txt --out cxr/
    """
    from datakit.convert.image_folder import ImageFolderOptions, convert_image_folder
    from tlxcore.progress import drawn

    with drawn() as progress:
        manifest = convert_image_folder(ImageFolderOptions(
            root=root, labels=labels, out=out, image_col=image_col, label_col=None if label_cols else label_col,
            label_sep=label_sep, label_cols=_csv(label_cols), none_label=none_label,
            patient_col=None if patient_col.lower() == "none" else patient_col, classes=_csv(classes),
            single_label=single_label, test_list=test_list, val=val, test=test, size=size, channels=int(channels),
            seed=seed, samples_per_shard=samples_per_shard, workers=workers, resume=resume), progress)
    _summary(manifest, out)


@convert.command("class-folder")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="root/<class>/<image> tree")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
@click.option("--eval-root", type=click.Path(file_okay=False),
              help="same layout; split evenly into val and test (all of --root then trains)")
@click.option("--classes", help="keep these class folders, in this order (e.g. an ImageNet-100 list)")
@click.option("--val", default=0.1, show_default=True, help="fraction of each class (without --eval-root)")
@click.option("--test", default=0.1, show_default=True, help="fraction of each class (without --eval-root)")
@click.option("--size", default=0, show_default=True, help="shorter side after resizing; 0 copies JPEGs unchanged")
@click.option("--quality", default=95, show_default=True, help="JPEG quality of re-encoded images")
@_common
def class_folder(root, out, eval_root, classes, val, test, size, quality, seed, samples_per_shard, workers, resume):
    """An ImageNet-style class-per-folder tree -> jpg/cls shards.

    \b
    Example:
      tlx convert class-folder --root imagenet/train --eval-root imagenet/val --out in1k/
      tlx convert class-folder --root imagenet/train --classes "$(cat in100.txt)" --out in100/
    """
    from datakit.convert.class_folder import ClassFolderOptions, convert_class_folder
    from tlxcore.progress import drawn

    if classes and "\n" in classes:
        classes = classes.replace("\n", ",")
    with drawn() as progress:
        manifest = convert_class_folder(ClassFolderOptions(
            root=root, out=out, eval_root=eval_root, classes=_csv(classes), val=val, test=test, size=size,
            quality=quality, seed=seed, samples_per_shard=samples_per_shard, workers=workers, resume=resume), progress)
    _summary(manifest, out)


def _register_study_commands() -> None:
    """The related studies' converters (cxr, image-mask, pcam, npy-volumes, dicom-images) live in their own module."""
    from cli.convert_study_cmds import register
    register(convert, _common, _summary, _csv)


_register_study_commands()
