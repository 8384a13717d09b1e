"""The fuzz acceptance of issue 10, small: `tlx shard` over the synthetic cohort, pydicom's test files
and mutated copies of cohort files exits 0 without a traceback or a hang, and accounts for every
file exactly once (benchmarks/shard_fuzz.py runs the full size: 500 mutants, every pydicom file)."""
from benchmarks.shard_fuzz import MUTATIONS, fuzz


def test_shard_over_pydicom_files_and_mutants_accounts_for_everything(cohort, tmp_path):
    root, _ = cohort
    r = fuzz(tmp_path, root, pydicom_files=40, mutants=5 * len(MUTATIONS), workers=2, timeout=600)
    assert r["passed"] == dict.fromkeys(r["passed"], True), (r["passed"], r["shard"]["output_tail"])
    assert r["accounting"]["found"] == r["corpus"]["cohort_files"] + 40 + 5 * len(MUTATIONS)
    outcomes = r["outcome_by_mutation"]
    assert set(outcomes) == set(MUTATIONS)
    assert "kept" not in outcomes["empty"]
