"""`tlx plan`, `tlx write`, `tlx shard`, `tlx verify`, `tlx info` (library: datakit.plan, datakit.write,
datakit.pipeline, datakit.verify, datakit.info). Parsing, drawing progress and printing only.

The options every datakit command shares are defined here once: `--workers` (WORKERS) and
`--resume auto|never` (resume_option; a bare `--resume`, the spelling before there were two
words, means auto).
"""
from __future__ import annotations

import itertools
import os

import click

DATASET = click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=str))
WORKERS = click.option("--workers", type=click.IntRange(min=1), default=None,
                       help="Processes [default: the cores this process may use].")


def resume_option(command: str):
    """`--resume auto|never` (docs/datakit.md, "Resume"); a bare `--resume` is auto."""
    return click.option("--resume", type=click.Choice(["auto", "never"]), default="auto", show_default=True,
                        is_flag=False, flag_value="auto",
                        help=f"auto: continue the folder's own earlier `{command}` (same inputs and options); "
                             "never: refuse a folder holding earlier work. A bare --resume is auto.")


class BareResumeCommand(click.Command):
    """Reads a bare `--resume` followed by the dataset folder (`tlx write --resume data/`) as
    `--resume auto data/`: click would take the folder for the option's value. Only an existing
    folder is read so; any other word stays the value, and a wrong one is refused as before."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        for i, (arg, after) in enumerate(itertools.pairwise(args)):
            if arg == "--resume" and after not in ("auto", "never") and os.path.isdir(after):
                args[i] = "--resume=auto"
        return super().parse_args(ctx, args)


def _fractions(ctx, param, value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} must be three numbers train,val,test, e.g. 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r} must be three numbers train,val,test, e.g. 0.8,0.1,0.1")
    return parts


PLAN_OPTIONS = [
    click.option("--min-slices", type=int, default=30, show_default=True,
                 help="Volumes (series) with fewer slices are dropped."),
    click.option("--split-by", type=click.Choice(["patient", "volume"]), default="patient", show_default=True,
                 help="Unit kept whole within one split (patient is stricter than the paper's volume)."),
    click.option("--fractions", default="0.8,0.1,0.1", show_default=True, callback=_fractions,
                 help="train,val,test shares of slices."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of split, subset and shuffle."),
    click.option("--exclude-class", "exclude_classes", multiple=True, metavar="CLASS",
                 help="Leave this class out (repeatable), e.g. --exclude-class other."),
    click.option("--subset-size", type=int, default=None,
                 help="Write this many slices: whole volumes, class ratio of the full set, same splits."),
    click.option("--subset-margin", type=float, default=0.25, show_default=True,
                 help="Convert this much more than a subset needs (write's filters drop slices)."),
    click.option("--allow-burned-in", is_flag=True,
                 help="Keep slices whose header says (or whose ImageType suggests) that their pixels show text "
                      "or a face; rejected as burned-in by default. Recorded in the manifest."),
]
WRITE_OPTIONS = [
    click.option("--size", default="256", show_default=True, help="Stored slice size: N or HxW pixels."),
    click.option("--codec", type=click.Choice(["zstd", "raw"]), default="zstd", show_default=True,
                 help="Payload: zstd-compressed or raw little-endian int16 HU."),
    click.option("--zstd-level", type=int, default=3, show_default=True),
    click.option("--min-coverage", type=float, default=0.25, show_default=True,
                 help="Slices whose body covers a smaller fraction of the image are dropped."),
    click.option("--samples-per-shard", type=int, default=5000, show_default=True),
    click.option("--hu-floor", default="-1024", show_default=True, metavar="HU|none",
                 help="HU below this (scanner padding outside the reconstruction circle) become this value "
                      "before resizing; 'none' keeps raw values."),
    WORKERS,
    click.option("--keep-staging", is_flag=True, help="Keep work/staging (converted volumes) after writing."),
]


def _apply(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _plan_config(min_slices, split_by, fractions, seed, exclude_classes, subset_size, subset_margin,
                 allow_burned_in=False):
    from datakit.plan import PlanConfig

    return PlanConfig(min_slices=min_slices, split_by=split_by, fractions=fractions, seed=seed,
                      exclude_classes=tuple(exclude_classes), subset_size=subset_size, subset_margin=subset_margin,
                      allow_burned_in=allow_burned_in)


def _write_config(size, codec, zstd_level, min_coverage, samples_per_shard, hu_floor):
    from datakit.write_config import WriteConfig, parse_hu_floor, parse_size

    return WriteConfig(size=parse_size(size), codec=codec, zstd_level=zstd_level, min_coverage=min_coverage,
                       samples_per_shard=samples_per_shard, hu_floor=parse_hu_floor(hu_floor))


@click.command(cls=BareResumeCommand, epilog="""\b
Example:
  tlx plan data/                                    # after `tlx scan --dicom-root DIR --out data/`
  tlx plan data/ --min-slices 30 --fractions 0.8,0.1,0.1 --seed 0
  tlx plan sub/ --subset-size 1281167 --exclude-class other      # RadNet-1.28M from RadNet-12M: sub/work/
                                                    # holds a copy of data/work/{index.parquet,scan.json}
""")
@DATASET
@_apply(PLAN_OPTIONS)
@resume_option("tlx plan")
def plan(dataset_dir, resume, **kw):
    """Stage 2: dedup, volumes, splits, subset and global order, on metadata only.

    Reads DATASET_DIR/work/index.parquet; writes work/plan.parquet, plan_volumes.parquet,
    plan_rejects.parquet and plan.json. With --resume auto an earlier plan is made again
    (the same options give the same plan); never refuses a folder that holds a plan.
    """
    from datakit.plan import make_plan
    from tlxcore.progress import drawn

    with drawn() as progress:
        summary = make_plan(dataset_dir, _plan_config(**kw), resume=resume, progress=progress)
    print_plan(summary)


@click.command(cls=BareResumeCommand, epilog="""\b
Example:
  tlx write data/                                   # after tlx scan + tlx plan; all cores; rerun it to
                                                    # finish a run that was killed (--resume auto)
  tlx write data/ --partition $SLURM_ARRAY_TASK_ID/16   # one of 16 array jobs (i from 0; a requeued task
                                                    # goes on where it stopped); the last to finish assembles
""")
@DATASET
@_apply(WRITE_OPTIONS)
@resume_option("tlx write")
@click.option("--partition", default="0/1", show_default=True, metavar="i/N",
              help="Convert only partition i of N (0-based); any run that finds all done assembles.")
@click.option("--dicom-root", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Where the DICOM files are (default: as recorded at scan time).")
def write(dataset_dir, size, codec, zstd_level, min_coverage, samples_per_shard, hu_floor, workers, resume,
          keep_staging, partition, dicom_root):
    """Stage 3: decode, convert to HU, resize, encode, shuffle into shards (resumable).

    Writes DATASET_DIR/shards/, slices.parquet, volumes.parquet, rejects.parquet and
    manifest.json (last: its presence means the dataset is complete).
    """
    from datakit.write import write_dataset
    from datakit.write_config import RunOptions, parse_partition
    from tlxcore.progress import drawn

    options = RunOptions(workers=workers, partition=parse_partition(partition), resume=resume,
                         keep_staging=keep_staging, dicom_root=dicom_root)
    config = _write_config(size, codec, zstd_level, min_coverage, samples_per_shard, hu_floor)
    with drawn() as progress:
        summary = write_dataset(dataset_dir, config, options, progress)
    print_write(summary)


@click.command(epilog="""\b
Example:
  export TLX_SECRET=$(openssl rand -hex 32)         # key for patient pseudonyms; keep it
  tlx shard --dicom-root cohort/ --out data/
  tlx shard --dicom-root /pacs/export --out data/ --size 256 --min-slices 30 --workers 16
  tlx shard --dicom-root /pacs/export --out data/                 # again after a crash or kill: continues
""")
@click.option("--dicom-root", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder of DICOM files: any depth, any file names.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="New dataset folder (or an earlier `tlx shard`'s, which --resume auto continues).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="File holding the pseudonym secret (default: env TLX_SECRET).")
@click.option("--label-rules", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Label rules TOML replacing the shipped datakit/label_rules.toml.")
@_apply(PLAN_OPTIONS)
@_apply(WRITE_OPTIONS)
@resume_option("tlx shard")
def shard(dicom_root, out_dir, secret_file, label_rules, min_slices, split_by, fractions, seed, exclude_classes,
          subset_size, subset_margin, allow_burned_in, size, codec, zstd_level, min_coverage, samples_per_shard,
          hu_floor, workers, resume, keep_staging):
    """DICOM tree -> dataset: tlx scan, tlx plan and tlx write in one go (resumable)."""
    from datakit.pipeline import shard as run_shard
    from datakit.write_config import RunOptions
    from tlxcore.progress import drawn

    with drawn() as progress:
        summary = run_shard(
            dicom_root, out_dir, secret_file=secret_file, label_rules=label_rules,
            plan_config=_plan_config(min_slices, split_by, fractions, seed, exclude_classes, subset_size,
                                     subset_margin, allow_burned_in),
            write_config=_write_config(size, codec, zstd_level, min_coverage, samples_per_shard, hu_floor),
            options=RunOptions(workers=workers, resume=resume, keep_staging=keep_staging), progress=progress)
    if summary.scan is not None:
        from cli.scan_cmd import print_scan_summary

        print_scan_summary(summary.scan)
    if summary.plan is not None:  # the dataset's warnings (below) supersede the plan's
        print_plan(summary.plan, warnings=summary.write.manifest is None)
    print_write(summary.write)


@click.command(epilog="""\b
Example:
  tlx verify data/
  tlx verify data/ --decode          # also decode every slice and check its pixel hash
""")
@DATASET
@WORKERS
@click.option("--decode", is_flag=True, help="Also decode every payload and check shape and pixel hash.")
@click.pass_context
def verify(ctx, dataset_dir, workers, decode):
    """Check every shard's bytes and every count of a dataset; exit 1 listing each problem.

    Any dataset kind (tlx shard's ct-slices; tlx convert's segmentation, multilabel,
    image-classification): shards against the manifest (size, sha256, samples, members,
    .idx), keys unique and equal to slices.parquet's, labels, counts of manifest and
    tables, no volume or patient in two splits, a known format version; for ct-slices
    also kept + rejected = found and no pixel hash twice.
    """
    from rich.console import Console

    from datakit.verify import verify_dataset
    from tlxcore.progress import drawn

    with drawn() as progress:
        report = verify_dataset(dataset_dir, workers=workers, decode=decode, progress=progress)
    console = Console()
    if report.ok:
        console.print(f"OK: {report.shards} shards, {report.samples} samples ({report.kind}); "
                      f"checked {', '.join(report.checked)}")
        return
    console.print(f"{len(report.problems)} problem(s) in {report.dataset}:")
    for problem in report.problems:
        console.print(f"  - {problem}", markup=False, highlight=False)
    ctx.exit(1)


@click.command(epilog="""\b
Example:
  tlx info data/
""")
@DATASET
def info(dataset_dir):
    """Slices, volumes and patients per split and label, rejects by code, shard diversity."""
    from rich.console import Console

    from datakit.info import dataset_info

    d = dataset_info(dataset_dir)
    console = Console()
    m = d.manifest
    image = next(k for k, v in m["members"].items() if v["role"] == "image")
    spec = m["members"][image]
    if m.get("kind", "ct-slices") != "ct-slices":
        _converted_info(console, d, image, spec)
        return
    console.print(f"{d.dataset}: tlx-shards v{m['format_version']}, {m['files']['kept']} slices kept of "
                  f"{m['files']['found']} files found; {image} ({spec['codec']}, int16 HU "
                  f"{'x'.join(map(str, spec['shape']))}); split by {m['config']['plan']['split_by']}")
    console.print(_table("slices per split and label", d.by_split_label))
    console.print(_table("per split", d.by_split))
    console.print(_table("rejected files by stage and code", d.rejects))
    console.print(_table("shard diversity (distinct volumes per shard; largest share of one volume in a shard)",
                         d.diversity.with_columns(max_volume_share=(d.diversity["max_volume_share"] * 100).round(1)
                                                  .cast(str) + "%")))


def _converted_info(console, d, image: str, spec: dict) -> None:
    """`tlx info` of a dataset of `tlx convert` (datakit.info_converted)."""
    m, config = d.manifest, d.manifest.get("config") or {}
    shape = "x".join(map(str, spec.get("shape") or ["variable"]))
    console.print(f"{d.dataset}: tlx-shards v{m['format_version']}, kind {m['kind']} ({config.get('converter')}), "
                  f"{sum(s['samples'] for s in m['splits'].values())} samples, {len(m['classes'])} classes; {image} "
                  f"({spec['codec']} {spec.get('dtype') or ''} {shape}); split by {config.get('split_by')}",
                  markup=False, highlight=False)
    for key in ("label_policy", "merge_labels"):
        if config.get(key):
            console.print(f"{key.replace('_', ' ')}: {config[key]}", markup=False, highlight=False)
    for share in config.get("sources") or []:
        console.print(f"source {share['name']}: {share['samples']}" + (f", lacks {', '.join(share['absent'])}"
                                                                        if share.get("absent") else ""),
                      markup=False, highlight=False)
    console.print(_table("samples per split and label", d.by_split_label))
    console.print(_table("per split", d.by_split))
    console.print(_table("rejected inputs by stage and code", d.rejects))
    console.print(_table("shard diversity", d.diversity))


def _table(title: str, frame) -> "object":
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*[("" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) for v in row])
    return table


def _print_warnings(console, warnings) -> None:
    for w in warnings or []:
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def print_plan(s, warnings: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"plan: {s.planned} of {s.found} files planned as slices of {s.volumes_planned} volumes "
                  f"({s.volumes_seen} series seen)")
    table = Table(title="planned per split", title_justify="left")
    for c in ("split", "slices", "volumes", "patients"):
        table.add_column(c, justify="left" if c == "split" else "right")
    for split, n in s.by_split.items():
        table.add_row(split, str(n["slices"]), str(n["volumes"]), str(n["patients"]))
    console.print(table)
    if s.rejected_by_code:
        console.print("not planned: " + ", ".join(f"{c} {n}" for c, n in s.rejected_by_code.items()))
    if warnings:
        _print_warnings(console, s.warnings)


def print_write(s) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if s.volumes_converted:
        console.print(f"converted {s.volumes_converted} volumes: {s.slices_converted} slices"
                      + (f", {s.slices_unreadable} unreadable" if s.slices_unreadable else "")
                      + f" in {s.seconds.get('convert', 0):.1f} s")
    if s.note:
        console.print(s.note)
    if s.manifest is None:
        return
    m = s.manifest
    console.print(("dataset already complete: " if s.already_complete else "wrote ") + s.dataset
                  + (f" in {s.seconds.get('assemble', 0):.1f} s" if s.assembled else ""))
    table = Table(title="dataset", title_justify="left")
    for c in ("split", "samples", "volumes", "patients", "shards"):
        table.add_column(c, justify="left" if c == "split" else "right")
    for split, n in m["splits"].items():
        table.add_row(split, str(n["samples"]), str(n["volumes"]), str(n["patients"]), str(n["shards"]))
    console.print(table)
    f = m["files"]
    console.print(f"files: {f['found']} found = {f['kept']} kept + {f['rejected']} rejected ("
                  + ", ".join(f"{c} {n}" for c, n in f["rejected_by_code"].items()) + ")")
    _print_warnings(console, m.get("warnings"))
    subset = m.get("subset")
    if subset and subset["short"]:
        gaps = ", ".join(f"{s}/{lab} {n}" for s, by in subset["short"].items() for lab, n in by.items())
        console.print(f"warning: the subset has {subset['written']} of {subset['size']} slices (short: {gaps}); "
                      "write's filters dropped more than --subset-margin allowed for: re-plan with a larger margin")
