"""`tlx shard`: scan + plan + write in one go, resumable stage by stage.

    summary = shard(dicom_root, out, secret_file=None, plan_config=PlanConfig(), write_config=WriteConfig(),
                    options=RunOptions(workers=8), progress=progress)

With `--resume auto` (the default; datakit.resume) a folder holding an earlier `tlx shard` is
continued: a stage whose output exists is not run again, so the index is reused (when scanned
from the same root with the same label rules), and the plan too when it was made with the same
options; write then finishes what is left. Earlier work made with other options is refused
before anything is replaced: a finished dataset, or a write begun from another plan or with
other write options; so is earlier work made with another pseudonym secret (work/scan.json and
manifest.json record its fingerprint, datakit.secret). `--resume never` wants an empty (or
absent) output folder.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from datakit.errors import DatakitError
from datakit.manifest import Layout, read_json
from datakit.plan import PlanConfig, PlanSummary, make_plan
from datakit.resume import check_output_folder, check_resume_mode, output_lock, refuse_foreign
from datakit.write import WriteSummary, check_earlier_write, write_dataset
from datakit.write_config import RunOptions, WriteConfig
from tlxcore.progress import Progress, silent


@dataclass
class ShardSummary:
    scan: object | None              # datakit.scan.ScanSummary, None when reused
    plan: PlanSummary | None         # None when reused
    write: WriteSummary


def shard(dicom_root, out, *, secret_file=None, label_rules=None, plan_config: PlanConfig = PlanConfig(),
          write_config: WriteConfig = WriteConfig(), options: RunOptions = RunOptions(),
          progress: Progress = silent) -> ShardSummary:
    """Run the three stages (see the module docstring); `progress` gets each stage's ticks."""
    plan_config.check()
    write_config.check()
    root, layout = Path(dicom_root), Layout(out)
    if not root.is_dir():
        raise DatakitError(f"DICOM root {str(root)!r} does not exist or is not a folder")
    check_before_work(root, layout.root, label_rules, plan_config)
    check_resume_mode(options.resume)
    from datakit.secret import load_secret

    secret = load_secret(secret_file)              # a weak or missing secret fails before anything is made
    refuse_foreign(layout.root)                    # before the lock leaves its file in someone's folder
    with output_lock(layout.root, "tlx shard"):   # scan, plan and write take it again (reentrant)
        return _shard(root, layout, secret, label_rules, plan_config, write_config, options, progress)


def check_before_work(root: Path, out: Path, label_rules, plan_config: PlanConfig) -> None:
    """What can be refused before the scan starts (and before work/ exists to be resumed): an output folder
    inside the DICOM root (the next scan would read the shards as input), and --exclude-class labels that
    the label rules cannot give any series."""
    from datakit.labels import load_rules

    if out.resolve().is_relative_to(root.resolve()):
        raise DatakitError(f"--out {str(out)!r} is inside --dicom-root {str(root)!r}: a later scan would read the "
                           f"dataset as input; give an output folder outside the DICOM root")
    rules = load_rules(label_rules)
    possible = sorted({r.label for r in rules.rules} | {rules.default})
    unknown = sorted(set(plan_config.exclude_classes) - set(possible))
    if unknown:
        raise DatakitError(f"--exclude-class {', '.join(unknown)}: no series can get that label; the label rules "
                           f"({Path(rules.source).name}) give {', '.join(possible)}")


def _shard(root: Path, layout: Layout, secret: bytes, label_rules, plan_config: PlanConfig, write_config: WriteConfig,
           options: RunOptions, progress: Progress) -> ShardSummary:
    """shard() once the output folder is locked; also on resume the earlier work must be `secret`'s."""
    from datakit.scan import check_scan_record, scan
    from datakit.secret import check_dataset_secret

    earlier = check_output_folder(layout.root, options.resume, "tlx shard")
    reuse_index = earlier and layout.index.exists()
    if reuse_index:
        check_scan_record(layout, root, label_rules, secret)
    if earlier:  # before anything is replaced: what write made here must be this run's own
        if layout.manifest.exists():        # a finished dataset must be this secret's too (its index may be gone)
            check_dataset_secret(layout.root, secret, fix="use that secret, or a new output folder")
        check_earlier_write(layout, plan_config.to_dict(), write_config)

    scan_summary = None
    if not reuse_index:
        scan_summary = scan(root, layout.root, workers=options.workers, secret=secret, label_rules=label_rules,
                            resume=options.resume, progress=progress)

    plan_summary = None
    same_plan = (layout.plan_json.exists() and layout.plan.exists()
                 and read_json(layout.plan_json, "work/plan.json").get("config") == plan_config.to_dict())
    if not (earlier and same_plan):
        plan_summary = make_plan(layout.root, plan_config, progress=progress)

    options = replace(options, dicom_root=options.dicom_root or str(root))
    return ShardSummary(scan_summary, plan_summary, write_dataset(layout.root, write_config, options, progress))

