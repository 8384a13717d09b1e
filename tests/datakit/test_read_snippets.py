"""The snippets of docs/dataset-format.md, "Reading a dataset from your own code", run as written (on a
small dataset instead of data/), and the public reader functions they use give the stored values."""
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datakit.errors import DatakitError
from datakit.read import iter_dataset, read_sample, torch_dataset
from tests.fixtures.datasets import make_ct_dataset
from tests.fixtures.optional import need

DOC = Path(__file__).parents[2] / "docs" / "dataset-format.md"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("snippets") / "data", splits={"train": 16, "val": 4, "test": 4})


def _snippets() -> list[str]:
    section = DOC.read_text().split("## Reading a dataset from your own code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_documented_snippets_run(ds, monkeypatch):
    for module in ("webdataset", "nvidia.dali", "duckdb", "pandas"):
        need(module)
    monkeypatch.chdir(ds.parent)   # the snippets say DATA = "data/"
    snippets = _snippets()
    assert len(snippets) == 5
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, str(DOC), "exec"), namespace)   # noqa: S102 - our own documentation
    slices = pl.read_parquet(ds / "slices.parquet").filter(pl.col("split") == "train")
    assert namespace["x"].shape == (8, 1, 32, 32)
    assert 0 <= float(namespace["x"].min()) <= float(namespace["x"].max()) <= 1
    assert namespace["key"] == slices["key"][0] and namespace["label"] == slices["label_index"][0]
    assert np.array_equal(namespace["first"], namespace["hu"])   # DALI and webdataset read the same first sample


def test_iter_dataset_gives_every_row_once_with_its_pixels(ds):
    slices = pl.read_parquet(ds / "slices.parquet").filter(pl.col("split") == "val")
    samples = list(iter_dataset(ds, "val"))
    assert [s["key"] for s in samples] == slices["key"].to_list()
    assert [s["label"] for s in samples] == slices["label_index"].to_list()
    assert all(s["image"].dtype == np.int16 and s["image"].shape == (32, 32) for s in samples)
    items = torch_dataset(ds, "val")
    assert len(items) == 4 and all(np.array_equal(items[i]["image"], samples[i]["image"]) for i in range(4))
    with pytest.raises(IndexError):
        items[4]


def test_read_sample_refuses_a_member_the_dataset_does_not_have(ds):
    with pytest.raises(DatakitError, match=r"member 'png' is not one of this dataset's: .*cls"):
        read_sample(b"", "png", ds)
