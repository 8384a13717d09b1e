"""Ready-made benchmark scripts: each prints a table and writes JSON (see RESULTS.md)."""

from pathlib import Path


def workdir(path: str) -> Path:
    """argparse type of --workdir: the folder, made if missing (a benchmark's temp folder goes inside it)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
