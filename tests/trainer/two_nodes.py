"""Two torchrun agents on loopback as two "nodes" (1 worker each, c10d rendezvous, gloo), for the tests.

    result = run_two_nodes(["trainer.simclr", "--data", ds, "--out", out, ...], tmp_path / "logs")
    assert result.ok, result.tail()

Each agent runs in its own session with its output in a file; past `timeout_s` the agents and
all their descendants are killed (torchrun starts each worker in a session of its own, so killing
the agent's process group alone would leave the workers behind), and a hang fails the test
instead of the suite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dist_helpers import free_port

HERE = Path(__file__).parent
@dataclass
class TwoNodes:
    codes: list[int | None]   # each agent's exit code; None: killed at the timeout
    logs: list[Path]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.codes == [0, 0]

    def text(self) -> str:
        return "\n".join(f"--- agent {i}\n{p.read_text(errors='replace')}" for i, p in enumerate(self.logs))

    def tail(self, chars: int = 4000) -> str:
        return f"codes {self.codes} after {self.seconds:.0f} s\n" + self.text()[-chars:]


def run_two_nodes(argv: list[str], logs: Path, *, env: dict[str, str] | None = None, max_restarts: int = 2,
                  timeout_s: float = 120, entry: Path = HERE / "kill_once.py") -> TwoNodes:
    """Start two agents of one job (`entry` runs argv[0] as a module with the rest as its flags); wait."""
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", str(max_restarts),
           "--monitor-interval", "0.1", str(entry), *map(str, argv)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TLX_QUIET": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), os.getcwd(), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    paths = [logs / f"agent{i}.log" for i in range(2)]
    start, procs = time.monotonic(), []
    try:
        for path in paths:
            with open(path, "w") as out:
                procs.append(subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        codes = [_wait(p, start + timeout_s) for p in procs]
    finally:
        for p in procs:             # on a timeout, and whatever else went wrong: nothing outlives the test
            _kill_tree(p)
    return TwoNodes(codes, paths, time.monotonic() - start)


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        return None


def _kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:     # exited: torchrun stops its workers before it exits
        return
    doomed = _descendants(proc.pid)  # before the agent dies: then its workers lose their parent
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _descendants(root: int) -> list[int]:
    """Every living process below `root`, from /proc (ppid links)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:             # exited while we looked
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found
