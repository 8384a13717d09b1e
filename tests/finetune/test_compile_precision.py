"""trainer.finetune's --compile, --bf16 and --channels-last (issue 19: supervised runs on the SimCLR loop's
footing), and trainer.precision, which both trainers and the benchmarks share."""
import json

import pytest
import torch

import trainer.finetune as ft
from tests.fixtures.datasets import make_ct_dataset
from trainer.checkpoint import load_checkpoint
from trainer.precision import Precision

TINY = ["--task", "radnet", "--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--batch-size", "8",
        "--lr", "3e-3", "--image-size", "32", "--epochs", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "ds", splits={"train": 24, "val": 6, "test": 6},
                           num_classes=3)


@pytest.fixture
def compiled(monkeypatch):
    """torch.compile with dynamo's eager backend: the same capture and graph as inductor's, without minutes of
    C++ compilation on a 2-core CI machine. Counts what it compiled."""
    real, calls = torch.compile, []

    def compile_eager(module, **kwargs):
        calls.append(type(module).__name__)
        return real(module, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def _losses(run):
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_compiled_run_trains_the_model_of_the_eager_run(ct, tmp_path, compiled):
    eager = ft.main([*TINY, "--data", str(ct), "--run-dir", str(tmp_path / "eager")])
    assert compiled == []
    fused = ft.main([*TINY, "--data", str(ct), "--run-dir", str(tmp_path / "compiled"), "--compile"])
    assert compiled == ["TaskModel"]     # the training forward ran through the compiled wrapper
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-5)
    assert fused["metrics"] == pytest.approx(eager["metrics"], rel=1e-5)
    # checkpoints hold the model's own names, not the wrapper's (`_orig_mod.`): --init and resume read them
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")
    assert list(b["encoder"]) == list(a["encoder"]) and list(b["head"]) == list(a["head"])
    for key, value in a["encoder"].items():
        torch.testing.assert_close(b["encoder"][key], value, rtol=1e-4, atol=1e-6)
    config = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert (config["compile"], config["bf16"], config["channels_last"]) == (True, True, True)


def test_compile_may_differ_from_a_runs_config_and_precision_may_not(ct, tmp_path, compiled):
    run = tmp_path / "run"
    first = ft.main([*TINY, "--data", str(ct), "--run-dir", str(run), "--epochs", "1"])
    # the same computation fused: the complete run is this run, not run again
    assert ft.main([*TINY, "--data", str(ct), "--run-dir", str(run), "--epochs", "1", "--compile"]) == first
    assert compiled == ["TaskModel"]     # built, never stepped: nothing was trained again
    with pytest.raises(ft.TrainerError, match=r"complete run made with other options: --bf16 differ"):
        ft.main([*TINY, "--data", str(ct), "--run-dir", str(run), "--epochs", "1", "--no-bf16"])


def test_precision_applies_on_gpus_only():
    cpu = Precision.of("cpu", bf16=True, channels_last=True)
    assert (cpu.bf16, cpu.channels_last, cpu.memory_format) == (False, False, torch.contiguous_format)
    x = torch.rand(2, 3, 8, 8)
    with cpu.autocast():
        assert (torch.nn.Linear(8, 8)(x).dtype, cpu.inputs(x).is_contiguous()) == (torch.float32, True)
    gpu = Precision.of(torch.device("cuda", 1), bf16=True, channels_last=False)
    assert (gpu.bf16, gpu.channels_last, gpu.memory_format) == (True, False, torch.contiguous_format)
    assert Precision.of("cuda", bf16=False).autocast().__class__.__name__ == "nullcontext"
    assert Precision.of("cuda").memory_format == torch.channels_last


def test_precision_place_and_inputs_use_channels_last_where_asked():
    # The memory-format part runs on the CPU too when forced: what a GPU run gets, checked without one.
    p = Precision(torch.device("cpu"), bf16=False, channels_last=True)
    conv = p.place(torch.nn.Conv2d(3, 4, 3))
    x = p.inputs(torch.rand(2, 3, 8, 8))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x.contiguous(), conv.weight.contiguous(),
                                                                   conv.bias))


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")   # the CPU build disables it, keeps the dtype
def test_bf16_autocast_context_is_bfloat16_on_cuda_devices():
    p = Precision.of("cuda")
    ctx = p.autocast()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
