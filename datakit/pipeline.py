"""`tlx shard`: scan + plan + write in one go, resumable stage by stage.

    summary = shard(dicom_root, out, secret_file=None, plan_config=PlanConfig(), write_config=WriteConfig(),
                    options=RunOptions(workers=8))

With --resume a stage whose output exists is not run again: the index is reused, and the
plan too when it was made with the same options (plan is deterministic, so re-planning
with other options gives a new plan, and write refuses staged files of another plan).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from datakit.errors import DatakitError
from datakit.manifest import Layout, read_json
from datakit.plan import PlanConfig, PlanSummary, make_plan
from datakit.write import WriteSummary, write_dataset
from datakit.write_config import RunOptions, WriteConfig


@dataclass
class ShardSummary:
    scan: object | None              # datakit.scan.ScanSummary, None when reused
    plan: PlanSummary | None         # None when reused
    write: WriteSummary


def _fresh_or_resumable(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatakitError(f"output {str(out)!r} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise DatakitError(f"output folder {str(out)!r} is not empty; choose a new folder, or pass --resume "
                           "to finish an interrupted `tlx shard` there")


def _check_scan_inputs(layout: Layout, root: Path, label_rules) -> None:
    """--resume reuses the index: its rows name files below the root it was scanned from, labelled
    by the rules of that scan (work/scan.json records both). Another --dicom-root made write read
    another folder's files at the same relative paths (PACS exports share layouts) under the index's
    pseudonyms; other --label-rules were ignored without a word."""
    if not layout.scan_record.exists():
        return
    from datakit.labels import rules_identity

    record = read_json(layout.scan_record, "work/scan.json")
    scanned = record.get("dicom_root")
    if scanned and Path(scanned).resolve() != root.resolve():
        raise DatakitError(f"{layout.index} was scanned from {scanned!r}, not {str(root)!r}; resume with that "
                           f"--dicom-root (if the files moved: `tlx write {layout.root} --resume --dicom-root DIR`), "
                           f"or use a new output folder")
    used, asked = record.get("label_rules"), rules_identity(label_rules)
    if used and used != asked:
        raise DatakitError(f"{layout.index} was labelled with the rules {used['name']} (sha256 {used['sha256'][:12]}), "
                           f"not {asked['name']} (sha256 {asked['sha256'][:12]}); resume with those rules, or "
                           f"delete {layout.index} to scan again with the new ones")


def shard(dicom_root, out, *, secret_file=None, label_rules=None, plan_config: PlanConfig = PlanConfig(),
          write_config: WriteConfig = WriteConfig(), options: RunOptions = RunOptions()) -> ShardSummary:
    plan_config.check()
    write_config.check()
    root, layout = Path(dicom_root), Layout(out)
    if not root.is_dir():
        raise DatakitError(f"DICOM root {str(root)!r} does not exist or is not a folder")
    _fresh_or_resumable(layout.root, options.resume)

    scan_summary = None
    if options.resume and layout.index.exists():
        _check_scan_inputs(layout, root, label_rules)
    else:
        from datakit.pseudonym import load_secret
        from datakit.scan import scan

        secret = load_secret(secret_file)
        scan_summary = scan(root, layout.root, workers=options.workers, secret=secret, label_rules=label_rules)

    plan_summary = None
    same_plan = (layout.plan_json.exists() and layout.plan.exists()
                 and read_json(layout.plan_json, "work/plan.json").get("config") == plan_config.to_dict())
    if not (options.resume and same_plan):
        plan_summary = make_plan(layout.root, plan_config)

    options = replace(options, dicom_root=options.dicom_root or str(root))
    return ShardSummary(scan_summary, plan_summary, write_dataset(layout.root, write_config, options))
