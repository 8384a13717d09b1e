"""Helpers of the write-side tests (fixtures are in conftest.py)."""
import shutil

from datakit.read import member_specs
from tlxcore.lock import LOCK_NAME

SECRET = "tlx-write-test-secret"
# Options of the reference dataset (conftest's `sharded`); tests that rebuild it from its plan use them too.
WRITE_ARGS = ["--size", "32", "--samples-per-shard", "16", "--workers", "1"]
PLAN_ARGS = ["--fractions", "0.5,0.25,0.25", "--seed", "0"]

def copy_plan(dataset, dest):
    """A fresh dataset folder holding only `dataset`'s index and plan (mtimes kept: the plan
    fingerprints its index), ready for `tlx write`."""
    (dest / "work").mkdir(parents=True)
    for name in ("index.parquet", "plan.parquet", "plan_volumes.parquet", "plan_rejects.parquet", "plan.json",
                 "scan.json"):
        shutil.copy2(dataset / "work" / name, dest / "work" / name)
    return dest


def output_files(dataset) -> dict:
    """Every output file of a dataset (work/ and the folder lock, which names its last holder's pid,
    excluded) -> its bytes."""
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted(dataset.rglob("*"))
            if p.is_file() and p.relative_to(dataset).parts[0] != "work" and p.name != LOCK_NAME}


def image_decoder(manifest: dict):
    """(the image member's extension, a function turning its bytes into the stored int16 slice), by
    the manifest's codec, through the dataset reader's own decoder."""
    from datakit.read import decode_member

    ext, spec = next((e, s) for e, s in member_specs(manifest["members"], "manifest").items() if s.role == "image")
    return ext, lambda data: decode_member(spec, bytes(data))
