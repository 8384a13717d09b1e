"""Multi-node restarts (issue 17): two torchrun agents on loopback as two nodes, ranks killed with SIGKILL,
and ranks that cannot meet their peers failing within TLX_DIST_TIMEOUT with one line.

The kill tests reproduce the hang of issue 17 deterministically (the survivor is busy when its peer
dies, so only the victim's agent counts a restart; tests/trainer/kill_once.py) and hung before the
round token of trainer/dist_join.py.
"""
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.distributed as dist
from dist_helpers import free_port, run_ranks
from torch.distributed.constants import default_pg_timeout
from two_nodes import run_two_nodes

from tests.fixtures.datasets import make_ct_dataset
from trainer.checkpoint import load_checkpoint, resumed_loss_sum, save_resume_point
from trainer.dist import Dist, close_dist, init_dist, rank_share
from trainer.dist_join import (
    DEFAULT_TIMEOUT_S,
    _agree_on_token,
    _Join,
    join_process_group,
    join_timeout_s,
)
from trainer.errors import TrainerError

# 12 training samples, global batch 4: 3 steps per epoch, 2 epochs = 6 steps; a checkpoint every 2 steps.
# Each kill comes at the 3rd optimizer step of its round: round 1 dies in step 3 (last checkpoint: 2),
# round 2 resumes at 2 and dies in step 5 (last checkpoint: 4), round 3 resumes at 4 and runs 5 and 6.
TRAINERS = {
    "trainer.simclr": ["--device", "cpu", "--model", "resnet-tiny", "--image-size", "32", "--batch-size", "4",
                       "--epochs", "2", "--workers", "0", "--loader", "torch", "--log-every", "1", "--eval-every", "0",
                       "--checkpoint-every", "2"],
    "trainer.finetune": ["--task", "radnet", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--model",
                         "resnet-tiny", "--device", "cpu", "--workers", "0", "--optimizer", "adamw",
                         "--checkpoint-every", "2"],
}
OUT_FLAG = {"trainer.simclr": "--out", "trainer.finetune": "--run-dir"}
WEIGHTS = {"trainer.simclr": ("encoder", "projector"), "trainer.finetune": ("encoder", "head")}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ds"), splits={"train": 12, "val": 4, "test": 4}, num_classes=2)


def _job(module, ds, out, kill_dir, kills):
    kill_dir.mkdir(parents=True)
    env = {"TLX_TEST_KILLS": ",".join(map(str, kills)), "TLX_TEST_KILL_AT": "3", "TLX_TEST_KILL_DIR": str(kill_dir),
           "TLX_DIST_TIMEOUT": "60"}   # were the ranks ever to look for each other under different keys: fail, not hang
    result = run_two_nodes([module, "--data", ds, *TRAINERS[module], OUT_FLAG[module], out], kill_dir / "logs",
                           env=env, timeout_s=240)
    assert result.ok, result.tail()
    return [json.loads(line) for line in (kill_dir / "processes.jsonl").read_text().splitlines()]


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _assert_same_run(module, a: Path, b: Path):
    """Bit for bit: every weight and optimizer tensor, every logged loss."""
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["step"] == cb["step"] == 6
    for part in WEIGHTS[module]:
        assert ca[part].keys() == cb[part].keys()
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part]), part
    state_a, state_b = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert len(state_a) == len(state_b) > 0
    for sa, sb in zip(state_a.values(), state_b.values()):
        assert all(torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa)
    drop = {"images_per_s", "wall_s"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in _lines(a / "metrics.jsonl")] == \
        [{k: v for k, v in m.items() if k not in drop} for m in _lines(b / "metrics.jsonl")]
    if module == "trainer.simclr":
        assert [s["loss"] for s in _lines(a / "steps.jsonl")] == [s["loss"] for s in _lines(b / "steps.jsonl")]
    else:
        assert json.loads((a / "result.json").read_text()) == json.loads((b / "result.json").read_text())
        assert pl.read_parquet(a / "predictions.parquet").equals(pl.read_parquet(b / "predictions.parquet"))


@pytest.mark.slow
@pytest.mark.parametrize("module, kills", [("trainer.simclr", [1, 0]), ("trainer.finetune", [0, 1])])
def test_two_nodes_survive_sigkill_of_either_rank_bit_for_bit(ds, tmp_path, module, kills):
    """One uninterrupted 2-node run; one where `kills[0]` dies after a checkpoint, then `kills[1]`
    in the round after."""
    _job(module, ds, tmp_path / "straight", tmp_path / "k-straight", [])
    processes = _job(module, ds, tmp_path / "killed", tmp_path / "k-killed", kills)
    assert [(tmp_path / "k-killed" / f"kill-{i}").read_text() for i in range(2)] == \
        [f"rank {r} killed at its step 3\n" for r in kills]
    # Each agent counts only its own worker's death (the other one restarts for the membership change):
    # in round 2 the ranks hold different TORCHELASTIC_RESTART_COUNTs, the case that hung before.
    starts = {r: [p["restart_count"] for p in processes if p["event"] == "start" and p["rank"] == r] for r in (0, 1)}
    assert starts[kills[0]] == [0, 1, 1] and starts[kills[1]] == [0, 0, 1]
    # the survivors of rounds 1 and 2 are stopped by torchrun's SIGTERM in their 3rd step (one line, code 143);
    # only round 3 exits with 0, after the 2 steps from the checkpoint of step 4 (no step lost or repeated)
    exits = sorted((p["code"], p["rank"], p["steps"]) for p in processes if p["event"] == "exit")
    assert exits == [(0, 0, 2), (0, 1, 2), (143, 0, 3), (143, 1, 3)], exits   # each rank survives one kill
    _assert_same_run(module, tmp_path / "straight", tmp_path / "killed")


def test_a_rank_resumes_its_own_loss_sum_or_on_another_world_size_the_mean():
    two = [Dist(r, r, 2, torch.device("cpu"), "gloo") for r in range(2)]
    assert [rank_share([1.5, 2.5], 9.0, env) for env in two] == [1.5, 2.5]
    three = [Dist(r, r, 3, torch.device("cpu"), "gloo") for r in range(3)]
    assert [rank_share([1.5, 2.5], 9.0, env) for env in three] == [2.0, 2.0, 2.0]   # the epoch mean stays right
    assert rank_share(None, 9.0, two[1]) == 9.0     # a checkpoint without the list: what it holds (rank 0's)
    older = {"epoch_loss_sum": 9.0}                 # written before epoch_loss_sums existed
    assert [resumed_loss_sum(older, env) for env in two] == [9.0, 9.0]


def _save_loss_sums(path):
    env = init_dist("cpu")
    try:
        save_resume_point(path, env.is_main, "m", {}, epoch_loss_sum=1.5 + env.rank, step=4)
    finally:
        close_dist(env)


def test_save_resume_point_keeps_every_ranks_loss_sum(tmp_path):
    """The trainers' one save helper gathers the ranks' partial-epoch loss sums; each rank reads back its own."""
    run_ranks(_save_loss_sums, str(tmp_path / "last.pt"), world=2)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch_loss_sums"] == [1.5, 2.5] and ckpt["epoch_loss_sum"] == 1.5 and ckpt["step"] == 4
    assert len(ckpt["rng"]) == 2
    two = [Dist(r, r, 2, torch.device("cpu"), "gloo") for r in range(2)]
    assert [resumed_loss_sum(ckpt, env) for env in two] == [1.5, 2.5]
    assert resumed_loss_sum(ckpt, Dist(0, 0, 1, torch.device("cpu"), None)) == 2.0   # one process: their mean


# --- the round token ----------------------------------------------------------------------------------

def _round(port, world, late_rank=None):
    """One torchrun round's handshake: a thread per rank, each with its own store client; their tokens."""
    tokens, errors = {}, []

    def rank_main(rank):
        try:
            if rank == late_rank:
                time.sleep(0.3)         # starts after rank 0 already answered the stale hellos
            client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))
            tokens[rank] = _agree_on_token(client, _Join(rank, world, 10.0, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(tokens) == world, errors
    return tokens


def test_every_rank_of_a_round_gets_the_same_new_token(agent_store):
    """The store outlives rounds: round 2 must not take round 1's answers, nor those a dead worker left."""
    first = _round(agent_store.port, 4)
    assert len(set(first.values())) == 1
    agent_store.append("tlx/join/hellos", "2:hello-of-a-worker-that-died-before-its-answer,")
    second = _round(agent_store.port, 4, late_rank=3)
    assert len(set(second.values())) == 1 and set(second.values()) != set(first.values())


def test_after_joining_collectives_get_torchs_default_timeout_again(monkeypatch):
    """TLX_DIST_TIMEOUT bounds the meeting only: rank 0 alone runs the kNN probe while the others wait."""
    _torchrun_env(monkeypatch, rank=0, port=free_port(), agent_store=False, timeout="7")
    store, _, _ = next(dist.rendezvous("env://", rank=0, world_size=1))
    monkeypatch.setattr(dist, "rendezvous", lambda *a, **k: iter([(store, 0, 1)]))
    join_process_group("gloo", torch.device("cpu"), rank=0, world_size=1, timeout_s=7)
    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert backend.options._timeout == default_pg_timeout == timedelta(minutes=30)
        assert store.timeout == default_pg_timeout
    finally:
        dist.destroy_process_group()


# --- a rank that cannot meet its peers ---------------------------------------------------------------

def _torchrun_env(monkeypatch, rank, port, agent_store=True, timeout="1"):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TLX_DIST_TIMEOUT", timeout)
    if agent_store:
        monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    else:
        monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)


@pytest.fixture
def agent_store():
    """A store as torchrun's rank-0 agent hosts it, with no worker yet."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    yield store
    del store


def _fails_in_time(match, timeout_s=1.0):
    start = time.monotonic()
    with pytest.raises(TrainerError, match=match) as err:
        init_dist("cpu")
    waited = time.monotonic() - start
    assert timeout_s <= waited < timeout_s + 2.5, waited  # the store client's retries may add about a second
    assert "\n" not in str(err.value)
    assert not dist.is_initialized()


def test_a_wrong_rendezvous_port_fails_within_the_timeout(monkeypatch):
    _torchrun_env(monkeypatch, rank=1, port=free_port())      # nobody listens there
    _fails_in_time(r"^rank 1 of 2 waited [123] s for the process group's store to answer \(store 127\.0\.0\.1:\d+, "
                   r"TLX_DIST_TIMEOUT=1\); are MASTER_ADDR and MASTER_PORT right, and is the rank-0 node up\? \(")


def test_rank_0_without_its_peer_fails_within_the_timeout(monkeypatch, agent_store):
    _torchrun_env(monkeypatch, rank=0, port=agent_store.port)
    _fails_in_time(r"^rank 0 of 2 waited 1 s for rank 1 to join the process group \(store 127\.0\.0\.1:\d+, "
                   r"TLX_DIST_TIMEOUT=1\); did every node's torchrun start, and did its worker die\?$")


def test_rank_1_without_rank_0_fails_within_the_timeout(monkeypatch, agent_store):
    agent_store.append("tlx/join/hellos", "1:stale-nonce-of-a-dead-round,")
    agent_store.set("tlx/join/welcome/stale-nonce-of-a-dead-round", "a-dead-rounds-token")   # must not be read
    _torchrun_env(monkeypatch, rank=1, port=agent_store.port)
    _fails_in_time(r"^rank 1 of 2 waited 1 s for rank 0 to open the process group \(store 127\.0\.0\.1:\d+, "
                   r"TLX_DIST_TIMEOUT=1\); rank 0 did not start, died, or waits elsewhere; see its log$")


def test_rank_0_hosting_the_store_alone_fails_within_the_timeout(monkeypatch):
    """Launched without torchrun's agent (MASTER_* set by hand or by a scheduler), rank 0 hosts the store."""
    _torchrun_env(monkeypatch, rank=0, port=free_port(), agent_store=False)
    _fails_in_time(r"^rank 0 of 2 waited [12] s for the other ranks to connect to the store it hosts "
                   r"\(store 127\.0\.0\.1:\d+, TLX_DIST_TIMEOUT=1\); did every rank start")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", ""])
def test_the_timeout_setting_is_checked(monkeypatch, value):
    monkeypatch.setenv("TLX_DIST_TIMEOUT", value)
    with pytest.raises(TrainerError, match=rf"^TLX_DIST_TIMEOUT='{value}' is not a number of seconds > 0 "):
        join_timeout_s()
    monkeypatch.setenv("TLX_DIST_TIMEOUT", "2.5")
    assert join_timeout_s() == 2.5
    monkeypatch.delenv("TLX_DIST_TIMEOUT")
    assert join_timeout_s() == DEFAULT_TIMEOUT_S == 300


@pytest.mark.parametrize("module", list(TRAINERS))
def test_both_trainers_stop_with_it_before_writing_anything(monkeypatch, capfd, tmp_path, module):
    """Whatever torch's C++ side logs while the rank waits (a stack trace per retry) is not shown."""
    _torchrun_env(monkeypatch, rank=1, port=free_port())
    main = importlib.import_module(module).main
    with pytest.raises(TrainerError, match=r"^rank 1 of 2 waited [123] s for the process group's store to answer"):
        main(["--data", str(tmp_path), *TRAINERS[module], OUT_FLAG[module], str(tmp_path / "run")])
    assert capfd.readouterr().err == ""
    assert not (tmp_path / "run").exists()


def test_the_entry_point_prints_one_line_and_exits_with_code_2(tmp_path):
    """As torchrun starts it, with a wrong MASTER_PORT."""
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "TORCHELASTIC_USE_AGENT_STORE": "True", "TLX_DIST_TIMEOUT": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(tmp_path), "--out",
                           str(tmp_path / "run"), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("Error: rank 1 of 2 waited ") and "TLX_DIST_TIMEOUT=1)" in proc.stderr


_STALLS_AFTER_JOINING = """
import sys, time
import trainer.dist_join as dj
from trainer.dist import init_dist
from trainer.errors import exit_on_user_error
if sys.argv[1] == "1":      # joins the process group, then never reaches the first collective
    dj._first_collective = lambda device, j: time.sleep(30)
start = time.monotonic()
try:
    exit_on_user_error(lambda: init_dist("cpu"))
finally:
    print(time.monotonic() - start, time.time(), flush=True)   # seconds waited; when it gave up
"""


def test_a_peer_that_hangs_after_joining_is_reported_by_the_first_collective(tmp_path):
    port = free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "TLX_DIST_TIMEOUT": "3", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _STALLS_AFTER_JOINING, str(r)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=90)
        exited = time.time()
        assert procs[0].returncode == 2, err[-2000:]
        assert err.strip() == ("Error: rank 0 of 2 waited 3 s for the other ranks in the first collective (store "
                               f"127.0.0.1:{port}, TLX_DIST_TIMEOUT=3); a peer died or hangs after joining")
        waited, gave_up = map(float, out.split())
        assert 3 <= waited < 5
        # the process ends then, not when gloo gives up on the peer (~30 s before the fix); a bare
        # `import torch` takes up to 2 s to exit on a loaded 2-core machine, hence not a tighter bound
        assert exited - gave_up < 10
    finally:
        for p in procs:
            p.kill()
            p.communicate()
