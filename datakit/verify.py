"""`tlx verify`: check that a dataset is exactly what its manifest says, and leak-free, for every
dataset kind (ct-slices from `tlx shard`; segmentation, multilabel, image-classification from
`tlx convert`).

    report = verify_dataset("data/", workers=4, decode=False)
    report.problems        # [] when everything checks out; else one precise sentence each

What is checked (docs/datakit.md lists the same):
  format     manifest.json is tlx-shards of a known format version and kind, with the members that
             kind needs (exactly one image) and known codecs
  shards     every shard exists with the manifest's byte size and sha256; its .idx matches the tar
             member by member (data offsets, sizes, names); every sample has exactly the manifest's
             members; class indices within the classes; no shard file on disk is missing from the
             manifest (verify_shards)
  keys       match [A-Za-z0-9_-]+, unique across the dataset, equal (in order) to slices.parquet's;
             cls / labels members equal slices.parquet's label_index / labels
  counts     samples per shard and split, volumes, patients and by_label per split agree between
             manifest, shards and slices.parquet; volumes.parquet agrees where the kind has one;
             ct-slices: kept + rejected = found and the rejects per code
  leaks      no volume in two splits; no patient in two splits where the split is by patient;
             ct-slices: no pixel hash twice (hence never in two splits)
  pixels     with decode=True: every image and mask decodes to its declared dtype and shape;
             ct-slices: its pixel hash is the one in slices.parquet; segmentation: each mask's
             pixels per class are slices.parquet's pixels_<class>
"""
from __future__ import annotations

from dataclasses import dataclass, field

from datakit.errors import DatakitError
from datakit.manifest import FORMAT, Layout, read_json
from datakit.pixel_hash import PIXEL_HASHES, dataset_pixel_hash
from datakit.read import ARRAY_CODECS, CODECS, FORMAT_VERSIONS, member_specs
from datakit.verify_shards import ShardCheck, check_shard
from datakit.verify_tables import KINDS, Kind, check_counts, check_keys, check_leaks, read_tables
from datakit.write_pool import run_tasks
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers


@dataclass
class VerifyReport:
    dataset: str
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    kind: str | None = None
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_format(manifest: dict, p: list) -> Kind | None:
    """The manifest's format, version, kind and members; the kind, or None after reporting."""
    before = len(p)
    if not isinstance(manifest, dict):
        p.append("manifest.json: not a JSON object")
        return None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in FORMAT_VERSIONS:
        p.append(f"manifest.json: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
                 f"is not known (this tlx knows {FORMAT!r} versions {', '.join(map(str, FORMAT_VERSIONS))})")
        return None
    if dataset_pixel_hash(manifest) not in PIXEL_HASHES:
        p.append(f"manifest.json: pixel_hash {manifest.get('pixel_hash')!r} is not one of: {', '.join(PIXEL_HASHES)}")
        return None
    kind = KINDS.get(manifest.get("kind", "ct-slices"))
    if kind is None:
        p.append(f"manifest.json: kind {manifest.get('kind')!r} is not one of: {', '.join(KINDS)}")
        return None
    members, classes = manifest.get("members") or {}, manifest.get("classes")
    if not isinstance(classes, list) or not classes:
        p.append("manifest.json: classes must be a non-empty list")
    for key, kind_of in (("members", dict), ("splits", dict), ("shards", list)):
        if not isinstance(manifest.get(key), kind_of):
            p.append(f"manifest.json: {key} must be a JSON {'object' if kind_of is dict else 'array'}")
    if not isinstance(members, dict):
        return None
    roles = sorted(m.get("role", "?") for m in members.values())
    required = [r for r in roles if r not in kind.optional]
    if roles.count("image") != 1 or sorted(required) != sorted(kind.roles) or len(set(roles)) != len(roles):
        optional = f" (and at most one of {', '.join(kind.optional)})" if kind.optional else ""
        p.append(f"manifest.json: kind {kind.name} needs one member per role {', '.join(kind.roles)}{optional}; "
                 f"members {sorted(members)} have roles {', '.join(roles)}")
    for ext, m in sorted(members.items()):
        if m.get("codec") not in CODECS:
            p.append(f"manifest.json: member {ext} has codec {m.get('codec')!r}, not one of: {', '.join(CODECS)}")
        elif m["codec"] in ARRAY_CODECS and not ({"dtype", "shape"} <= set(m)):
            p.append(f"manifest.json: member {ext} ({m['codec']}) lacks its dtype or shape")
    if kind.name == "ct-slices" and "cls" not in members:
        p.append(f"manifest.json: members {sorted(members)} must hold one image and 'cls'")
    return None if len(p) > before else kind


def verify_dataset(dataset_dir, workers: int | None = None, decode: bool = False,
                   progress: Progress = silent) -> VerifyReport:
    """Check the dataset (see the module docstring); `progress` gets Tick("verify", shards read, shards)."""
    layout = Layout(dataset_dir)
    if not layout.root.is_dir():
        raise DatakitError(f"dataset folder {str(layout.root)!r} does not exist")
    if not layout.manifest.exists():
        raise DatakitError(f"{layout.root} holds no manifest.json: not a finished tlx dataset")
    report = VerifyReport(str(layout.root))
    p = report.problems
    manifest = read_json(layout.manifest, "manifest.json")
    kind = check_format(manifest, p)
    if kind is None:
        return report
    report.kind = kind.name
    report.checked.append("format")
    members, classes, shards = manifest["members"], manifest["classes"], manifest["shards"]

    tables = read_tables(layout, kind, classes, p)
    if tables is None:
        return report
    slices, volumes, rejects = tables

    # Shards, read in parallel.
    results = {}
    specs = member_specs(members, layout.manifest)
    hashed_by = dataset_pixel_hash(manifest) if kind.name == "ct-slices" else None
    tasks = [ShardCheck(str(layout.root), e, specs, len(classes), decode, hashed_by) for e in shards]
    progress(Tick("verify", 0, len(shards), "shards"))
    for r in run_tasks(check_shard, tasks, workers or default_workers()):
        results[r["path"]] = r
        progress(Tick("verify", len(results), len(shards), "shards"))
    report.shards, report.samples = len(shards), sum(len(r["keys"]) for r in results.values())
    for e in shards:
        p.extend(results[e["path"]]["problems"])
    listed = {e["path"] for e in shards} | {e["index"] for e in shards}
    if layout.shards.exists():
        for f in sorted(layout.shards.glob("*/*")):
            if str(f.relative_to(layout.root)) not in listed:
                p.append(f"{f.relative_to(layout.root)}: on disk but not in the manifest")
    report.checked.append("shards")

    check_keys(shards, results, slices, classes, p)
    report.checked.append("keys")
    check_counts(manifest, kind, slices, volumes, rejects, p)
    report.checked.append("counts")
    check_leaks(manifest, kind, slices, p)
    report.checked.append("leaks")
    if decode:
        report.checked.append("pixels")
    return report
