"""Join the process group of one torchrun round, or fail within a deadline with one line.

    from trainer.dist_join import join_process_group, join_timeout_s
    join_process_group("gloo", torch.device("cpu"), rank=1, world_size=2, timeout_s=join_timeout_s())

`trainer.dist.init_dist` calls this under torchrun (or any env:// launch). It does three things:

1. **A round token every rank agrees on.** torchrun (torch 2.13, c10d rendezvous) hands every worker
   a TCPStore client to one store that the rank-0 agent keeps for the whole job, across restarts
   (`TORCHELASTIC_USE_AGENT_STORE=True`; `DynamicRendezvousHandler.next_rendezvous` builds it once
   and only rebuilds it when the agent's rank changes). The keys of a dead round stay in it, and a
   new round that reads them connects to dead addresses ("Connection refused"). The process group
   therefore lives under a prefix that is new in every round. No environment variable can give that
   prefix: `MASTER_ADDR`/`MASTER_PORT` (the shared store) and `TORCHELASTIC_RUN_ID` are the same in
   every round, the rendezvous round number is not exported, and `TORCHELASTIC_RESTART_COUNT`
   counts only the failures of the agent's own workers: after rank 1's node fails, rank 1 runs
   with count 1 and rank 0 with count 0 (`elastic/agent/server/api.py`, `_invoke_run`: a membership
   change "do[es] not count as retries"). A prefix built from it splits the ranks forever; that was
   the multi-node hang of issue 17. So the ranks agree on a token through the store itself:
   rank 0 draws a fresh random token; every other rank appends a fresh random nonce to a hello list
   and waits for the key `welcome/<nonce>`; rank 0 answers every nonce it sees with its token and
   waits until every rank has acknowledged under `<token>/acks`. Stale hellos of dead rounds get an
   answer nobody reads; a fresh nonce can only be answered by a live rank 0; and a torchrun round
   starts its workers only after every agent stopped the previous round's workers, so the only live
   rank 0 is this round's. Hence every rank of the round ends up with the same token, and no key of
   another round is read.
2. **A bounded join.** Reaching the store, the handshake, `init_process_group` and a first
   collective all share one deadline (`TLX_DIST_TIMEOUT` seconds, default 300). A rank that cannot
   meet its peers raises TrainerError naming itself and what it waited for; the entry point prints it
   as one line and exits with code 2, and torchrun restarts the round or gives up.
3. **Long collectives afterwards.** The deadline is for meeting only: once the first collective
   is through, the process group and the store get torch's default timeouts back (30 min for gloo,
   10 min for NCCL), since rank 0 alone runs the kNN probe while the others wait.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

from trainer.errors import TrainerError

TIMEOUT_ENV = "TLX_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
KEYS = "tlx/join"         # the handshake's keys in torchrun's store; the process group's go under KEYS/<token>
POLL_S = 0.02             # how often rank 0 looks for new hellos and acknowledgements


def join_timeout_s() -> float:
    """Seconds a rank waits for its peers: $TLX_DIST_TIMEOUT, else 300."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise TrainerError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0 (the time a rank waits for its "
                           f"peers when the process group starts; default {DEFAULT_TIMEOUT_S:g})")
    return value


@dataclass(frozen=True)
class _Join:
    """Who is joining, where, and until when (for the waits and their messages)."""
    rank: int
    world_size: int
    timeout_s: float
    start: float        # time.monotonic() when the join began

    @property
    def where(self) -> str:
        return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"

    def left(self) -> float:
        return max(self.start + self.timeout_s - time.monotonic(), 0.001)

    def late(self) -> bool:
        return time.monotonic() >= self.start + self.timeout_s

    def waited(self, what: str, hint: str) -> TrainerError:
        # the time actually waited: the store client's connection retries can overrun the deadline by ~1 s
        return TrainerError(f"rank {self.rank} of {self.world_size} waited {time.monotonic() - self.start:.0f} s "
                            f"for {what} (store {self.where}, {TIMEOUT_ENV}={self.timeout_s:g}); {hint}")


def join_process_group(backend: str, device: torch.device, rank: int, world_size: int, timeout_s: float) -> None:
    """Start the default process group of this round; TrainerError if the peers do not all show up in time."""
    j = _Join(rank, world_size, timeout_s, time.monotonic())
    store = _open_store(j)
    token = _agree_on_token(store, j)
    # The process group's own timeout ends with the deadline on gloo: a gloo operation still
    # waiting when the process exits would hold the exit until it times out. NCCL gets 30 s more,
    # so that the poll in _first_collective, not NCCL's watchdog (which aborts the process),
    # reports the missing rank; the watchdog then ends the process.
    margin = 30 if backend == "nccl" else 0
    dist.init_process_group(backend, store=dist.PrefixStore(f"{KEYS}/{token}", store), rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=j.left() + margin))
    _first_collective(device, j)
    normal = default_pg_nccl_timeout if backend == "nccl" and default_pg_nccl_timeout else default_pg_timeout
    dist.distributed_c10d._set_pg_timeout(normal)  # torch's own setter; there is no public one in 2.13
    store.set_timeout(normal)


def _open_store(j: _Join) -> dist.Store:
    """torchrun's store client (or, launched without an agent, rank 0's own store), within the deadline."""
    try:
        with _cpp_logs_muted():
            store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=j.left())))
    except ValueError as exc:  # a variable of the env:// launch is missing
        raise TrainerError(f"rank {j.rank} of {j.world_size}: {exc} (launch with torchrun, which sets RANK, "
                           "WORLD_SIZE, MASTER_ADDR and MASTER_PORT)") from None
    except (RuntimeError, TimeoutError) as exc:  # DistStoreError, DistNetworkError: not reachable in time
        why = _first_line(exc)
        if j.rank == 0 and not _agent_store():
            raise j.waited("the other ranks to connect to the store it hosts",
                           f"did every rank start, with this MASTER_ADDR and MASTER_PORT? ({why})") from None
        raise j.waited("the process group's store to answer",
                       f"are MASTER_ADDR and MASTER_PORT right, and is the rank-0 node up? ({why})") from None
    return store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _cpp_logs_muted():
    """Send file descriptor 2 to a scratch file for the duration. While a rank waits for the store,
    torch's C++ side logs every retry and timeout to stderr, each with a 30-line stack trace; the
    TrainerError raised after the wait says what happened in one line, so that output is dropped.
    (TORCH_CPP_LOG_LEVEL would do it, but it is read once, when torch is imported.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _agent_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)


def _agree_on_token(store: dist.Store, j: _Join) -> str:
    """The token of this round (see the module docstring): rank 0 makes it, the others ask for it."""
    if j.rank == 0:
        return _hand_out_token(store, j)
    nonce = uuid.uuid4().hex
    store.append(f"{KEYS}/hellos", f"{j.rank}:{nonce},")
    try:
        with _cpp_logs_muted():
            store.wait([f"{KEYS}/welcome/{nonce}"], timedelta(seconds=j.left()))
    except (RuntimeError, TimeoutError):
        raise j.waited("rank 0 to open the process group",
                       "rank 0 did not start, died, or waits elsewhere; see its log") from None
    token = store.get(f"{KEYS}/welcome/{nonce}").decode()
    store.append(f"{KEYS}/{token}/acks", f"{j.rank},")
    return token


def _hand_out_token(store: dist.Store, j: _Join) -> str:
    token, answered, acked = uuid.uuid4().hex, set(), set()
    expected = set(range(1, j.world_size))
    while True:
        for entry in _read_list(store, f"{KEYS}/hellos"):
            nonce = entry.partition(":")[2]
            if nonce not in answered:          # stale hellos of dead rounds too: nobody waits for those
                store.set(f"{KEYS}/welcome/{nonce}", token)
                answered.add(nonce)
        acked.update(int(r) for r in _read_list(store, f"{KEYS}/{token}/acks"))
        if acked >= expected:
            return token
        if j.late():
            missing = sorted(expected - acked)
            raise j.waited(f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} to join the "
                           "process group", "did every node's torchrun start, and did its worker die?")
        time.sleep(POLL_S)


def _read_list(store: dist.Store, key: str) -> list[str]:
    """The entries of a comma-terminated list that store.append builds ([] while nobody appended)."""
    if not store.check([key]):
        return []
    return [e for e in store.get(key).decode().split(",") if e]


def _first_collective(device: torch.device, j: _Join) -> None:
    """One all_reduce that every rank must reach by the deadline (NCCL connects only now)."""
    ones = torch.ones(1, device=device)
    work = dist.all_reduce(ones, async_op=True)
    while not work.is_completed():
        if j.late():
            _leave_gloo_group()
            raise j.waited("the other ranks in the first collective", "a peer died or hangs after joining")
        time.sleep(POLL_S)
    try:
        work.wait()
    except (RuntimeError, TimeoutError) as exc:   # gloo's own timeout, or a peer died: connection closed
        if j.late():
            raise j.waited("the other ranks in the first collective", "a peer died or hangs after joining") from None
        raise TrainerError(f"rank {j.rank} of {j.world_size}: a peer left during the first collective "
                           f"(store {j.where}): {_first_line(exc)}") from None
    if int(ones.item()) != j.world_size:
        raise TrainerError(f"rank {j.rank} of {j.world_size}: the first collective counted {int(ones.item())} "
                           f"ranks, not {j.world_size}")


def _leave_gloo_group() -> None:
    """Destroy a gloo process group whose first collective is still pending, before the error ends the
    process: left to the interpreter's exit, its worker thread was still running about half the time
    and the exit aborted ("terminate called without an active exception", code -6, not 2). An NCCL
    group is left to NCCL's watchdog (module docstring)."""
    if dist.get_backend() == "gloo":
        dist.destroy_process_group()
