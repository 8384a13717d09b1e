"""`tlx synth`: a synthetic CT cohort as real DICOM files (library: datakit.synth.make_cohort), or with
`--kind natural` a small natural-image domain as JPEG in class folders (datakit.synth.natural)."""
from __future__ import annotations

import click

from cli.datakit_cmds import WORKERS


@click.command(epilog="""\b
Example:
  tlx synth --out cohort/ --patients 40               # 512x512 slices, about 2 GB
  tlx synth --out small/ --patients 8 --matrix 64 --seed 1
  tlx synth --kind natural --out natural/ --per-class 40 --matrix 64   # then: tlx convert class-folder
  tlx synth --out mix/ --patients 20 --seed 4 --syntax-mix realistic   # 80/15/5 % LE / JPEG lossless / other
""")
@click.option("--kind", type=click.Choice(["ct", "natural"]), default="ct", show_default=True,
              help="ct: DICOM CT cohort; natural: 10 classes of coloured shapes on textures, JPEG in class folders.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="New (or empty) folder for the cohort.")
@click.option("--patients", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical files.")
@click.option("--matrix", type=click.IntRange(32, 1024), default=None,
              help="Image size in pixels [default: 512 for ct, 64 for natural] "
                   "(smaller is faster; 64 for quick tests).")
@click.option("--per-class", type=click.IntRange(min=1), default=40, show_default=True,
              help="--kind natural: images per class.")
@click.option("--syntax-mix", type=click.Choice(["traps", "realistic"]), default="traps", show_default=True,
              help="--kind ct. traps: one volume per special transfer syntax, the rest explicit VR LE; realistic: "
                   "about 80/15/5 % of slices explicit VR LE / JPEG lossless / other syntaxes, as PACS exports.")
@WORKERS
def synth(kind, out, patients, seed, matrix, per_class, syntax_mix, workers):
    """Generate a synthetic CT cohort: phantoms in HU written as real DICOM files.

    Patients with studies and series of head, thorax, abdomen, pelvis, knee, spine and
    whole-trunk scans, PHI-like header fields, English and German descriptions, several
    transfer syntaxes, and the mess of real exports (scouts, short series, re-sent and
    copied series, dose reports, a DICOMDIR, junk files). OUT/cohort.json holds the
    ground truth: every file, what it is, and what scan should say about it.
    """
    from rich.console import Console

    from datakit.synth.make_cohort import synth_cohort
    from tlxcore.progress import drawn

    matrix = matrix or (64 if kind == "natural" else 512)
    if kind == "natural":
        from datakit.synth.natural import synth_natural
        with drawn() as progress:
            summary = synth_natural(out, per_class=per_class, size=matrix, seed=seed, progress=progress)
        Console().print(f"wrote {summary['files']} JPEGs in {len(summary['classes'])} class folders to {out}; "
                        f"next: tlx convert class-folder --root {out} --out <dataset>")
        return

    with drawn() as progress:
        summary = synth_cohort(out, patients=patients, seed=seed, matrix=matrix, workers=workers, progress=progress,
                               syntax_mix=syntax_mix)
    Console().print(f"wrote {summary['files']} files ({summary['series']} series, {summary['patients']} patients) "
                    f"to {out}; ground truth in {out}/cohort.json")
    Console().print(", ".join(f"{k}: {v}" for k, v in summary["by_kind"].items()))
