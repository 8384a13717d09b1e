"""`tlx features`: a run's init, fine-tuned and random encoders on a probe set, sampled at the same points for every
run; `tlx analyze` compares them layer by layer."""
import json

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

import trainer.finetune as ft
from analysis.activations import load_features
from analysis.report import ReportOptions, compute_report
from analysis.report_markdown import render_index
from cli.main import cli
from tests.fixtures.datasets import make_ct_dataset
from trainer.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from trainer.errors import TrainerError
from trainer.features import LAYERS, extract_features
from trainer.models import build_encoder

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--optimizer", "adamw", "--epochs", "1",
        "--batch-size", "8", "--lr", "1e-3"]
SAMPLING = dict(images=10, points=300, channels=8, repeats=2, seed=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("features")
    data = make_ct_dataset(base / "ct", splits={"train": 24, "val": 8, "test": 12}, num_classes=3)
    torch.manual_seed(7)
    init = base / "pre" / "ct-init" / "checkpoints" / "last.pt"
    save_checkpoint(new_checkpoint("resnet-tiny", build_encoder("resnet-tiny").state_dict(), step=1, epoch=1), init)
    out = base / "runs"
    ft.main(["--task", "radnet", "--data", str(data), "--out", str(out), "--seed", "0", *TINY])
    for setting in ("linear", "finetune"):
        ft.main(["--task", "radnet", "--data", str(data), "--out", str(out), "--seed", "1", "--init", str(init),
                 "--setting", setting, *TINY])
    scratch = out / "radnet" / "scratch" / "finetune" / "frac-1.0" / "seed-0"
    linear = out / "radnet" / "ct-init" / "linear" / "frac-1.0" / "seed-1"
    tuned = out / "radnet" / "ct-init" / "finetune" / "frac-1.0" / "seed-1"
    result = CliRunner().invoke(cli, ["features", str(scratch), str(linear), str(tuned), "--probe", str(data),
                                      "--device", "cpu", *[f"--{k}={v}" for k, v in SAMPLING.items()]])
    assert result.exit_code == 0, result.output
    return data, out, scratch, linear, init


def _probe_images(data, n, seed):
    from datakit.read import open_dataset
    from trainer.data.labelled import ImageOptions, LabelledSplit

    split = LabelledSplit(open_dataset(data), "test", "classification", ImageOptions(32))
    ids = np.sort(np.random.default_rng([seed, 0]).choice(len(split), n, replace=False))
    return torch.stack([split[(int(i), 0)][0] for i in ids])


def test_saved_activations_are_the_encoders_outputs_at_the_sampled_points(runs):
    data, _, scratch, _, _ = runs
    f = load_features(scratch / "features.npz")
    assert f.layers == list(LAYERS) and f.repeats == 2
    assert f.meta["models"]["random"] == {"seed": 0, "same_as": "init"}    # scratch: the random encoder is its init
    x = _probe_images(data, 10, 3)
    torch.manual_seed(0)
    init = build_encoder("resnet-tiny").eval()                            # scratch init of seed 0, rebuilt here
    final = build_encoder("resnet-tiny").eval()
    final.load_state_dict(load_checkpoint(scratch / "checkpoints" / "best.pt")["encoder"])
    with np.load(scratch / "features.npz") as npz, torch.no_grad():
        for model, encoder in (("init", init), ("final", final)):
            stages = dict(zip(LAYERS, encoder.forward_stages(x)))
            for layer in LAYERS:
                for r in range(2):
                    flat, ch = npz[f"points/{layer}/{r}"], npz[f"channels/{layer}/{r}"]
                    c, h, w = stages[layer].shape[1:]
                    assert len(flat) == min(300, 10 * h * w) and len(ch) == min(8, c) and len(set(flat)) == len(flat)
                    img, rest = np.divmod(flat, h * w)
                    expected = stages[layer].numpy()[img, :, rest // w, rest % w][:, ch]
                    got = npz[f"{model}/{layer}/{r}"]
                    assert got.dtype == np.float16 and got.shape == expected.shape
                    assert np.allclose(got, expected.astype(np.float16), rtol=1e-3, atol=1e-3)
        assert "random/conv1/0" not in npz.files


def test_runs_with_the_same_probe_are_sampled_alike(runs):
    _, _, scratch, linear, _ = runs
    a, b = load_features(scratch / "features.npz"), load_features(linear / "features.npz")
    assert a.probe_id == b.probe_id and a.meta["probe"]["keys"] == b.meta["probe"]["keys"]
    with np.load(scratch / "features.npz") as x, np.load(linear / "features.npz") as y:
        assert all(np.array_equal(x[k], y[k]) for k in x.files if k.startswith(("points/", "channels/")))
    assert b.meta["models"]["init"]["checkpoint"].endswith("last.pt") and "same_as" not in b.meta["models"]["random"]


def test_analyze_compares_init_fine_tuned_random_and_inits(runs, tmp_path):
    _, out, _, _, _ = runs
    rep = compute_report(out, tmp_path / "report", options=ReportOptions(redundancy_splits=1))
    rows = pl.DataFrame(rep.activations)
    tuned = rows.filter(pl.col("setting") == "finetune")
    assert set(tuned["comparison"]) == {"init ↔ fine-tuned", "random ↔ random", "fine-tuned ↔ fine-tuned"}
    assert tuned.height == 4 * len(LAYERS)   # two init ↔ fine-tuned, one random pair (seeds 0, 1), one init pair
    assert set(tuned.filter(pl.col("comparison") == "fine-tuned ↔ fine-tuned")["label"]) == {"ct-init ↔ scratch"}
    frozen = rows.filter(pl.col("setting") == "linear")
    assert set(frozen["comparison"]) == {"init ↔ fine-tuned"}   # one run: nothing to pair it with
    # linear evaluation leaves the encoder as it was: its init and fine-tuned activations are the same
    assert frozen["mean_cca"].to_list() == pytest.approx([1.0] * 5, abs=1e-6)
    assert frozen["cka"].to_list() == pytest.approx([1.0] * 5, abs=1e-9)
    random = tuned.filter(pl.col("comparison") == "random ↔ random")
    assert (random["cka"] < 1 - 1e-3).all() and (random["repeats"] == 2).all()
    text = render_index(rep)
    assert "## Activation similarity (CCA, SVCCA, CKA)" in text and "| random ↔ random | random | conv1 | 1 |" in text


def test_a_changed_init_or_a_missing_checkpoint_is_refused(runs, tmp_path):
    data, _, scratch, linear, init = runs
    saved = init.read_bytes()
    try:
        torch.manual_seed(99)
        save_checkpoint(new_checkpoint("resnet-tiny", build_encoder("resnet-tiny").state_dict()), init)
        with pytest.raises(TrainerError, match="is gone or changed since the run"):
            extract_features(linear, data, **SAMPLING)
    finally:
        init.write_bytes(saved)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((scratch / "config.json").read_text())
    with pytest.raises(TrainerError, match="best.pt' does not exist"):
        extract_features(copy, data, **SAMPLING)
    cfg = json.loads((scratch / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "setting": "pretrain"}))
    with pytest.raises(TrainerError, match="not a fine-tuning run"):
        extract_features(copy, data, **SAMPLING)
