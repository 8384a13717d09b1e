"""Entry point of the `tlx` command.

Subcommands are imported only when they run, so `tlx --help` is instant and never
imports torch. Each subcommand lives in a small module of this package and only
parses options, calls a library function and prints the result.

Errors a user can fix (bad path, missing secret, ...) are raised by the libraries as
their package's error class; here they become a one-line message and exit code 2
instead of a traceback. So does a full disk (free space, then run the command again), and
Ctrl-C ends a command with one line saying how to continue (exit code 130).
"""
from __future__ import annotations

import errno
import importlib

import click

# name -> (module:attribute, one-line summary for `tlx --help`). Order is the help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cli.synth_cmd:synth", "Generate a synthetic CT cohort as real DICOM files."),
    "shard": ("cli.datakit_cmds:shard", "DICOM tree -> shards: scan + plan + write in one go."),
    "scan": ("cli.scan_cmd:scan", "Stage 1: read DICOM headers into index.parquet."),
    "plan": ("cli.datakit_cmds:plan", "Stage 2: filter, dedup, label, split and order (metadata only)."),
    "write": ("cli.datakit_cmds:write", "Stage 3: decode, convert and write shards (resumable, partitionable)."),
    "show": ("cli.show_cmd:show", "Draw a dataset's samples, or a pretraining run's views, into a PNG grid."),
    "verify": ("cli.datakit_cmds:verify", "Check every shard's bytes and every count of a dataset."),
    "info": ("cli.datakit_cmds:info", "Summarise a dataset: slices/volumes/patients per split and label."),
    "audit": ("cli.audit_cmd:audit", "Search a dataset's shareable files for PHI before sharing it."),
    "pack": ("cli.pack_cmd:pack", "Make the shareable copy of a dataset (no work/, no source paths), audited."),
    "secret": ("cli.secret_cmd:secret", "Make a strong pseudonym key, or check which datasets it made."),
    "convert": ("cli.convert_cmds:convert", "Convert public datasets (NIfTI, masks, chest X-rays, ...) to shards."),
    "sweep": ("cli.sweep_cmd:sweep", "Expand an experiment matrix into fine-tuning runs."),
    "analyze": ("cli.analysis_cmds:analyze", "Turn run directories into tables, tests and figures."),
    "scale-factors": ("cli.analysis_cmds:scale_factors", "Estimate a dataset's scale factors S_LB and S_UB."),
    "export": ("cli.export_cmd:export",
               "Write a checkpoint's encoder as a plain torchvision-layout .pth/.safetensors."),
    "features": ("cli.features_cmd:features", "Save runs' layer activations on a probe set for CCA/CKA."),
    "weights": ("cli.weights_cmd:weights", "Inspect a pretrained checkpoint's layout; convert Keras .h5 weights."),
    "demo": ("cli.demo_cmd:demo", "Run the whole pipeline on a small synthetic cohort."),
}


# What one line after Ctrl-C says, per command (others: click's "Aborted!"). Every datakit command
# that writes keeps what it finished (atomic files) and continues it when run again (--resume auto).
_AGAIN = "run the same command again to continue where it stopped (--resume auto, the default, keeps what is done)"
INTERRUPTED: dict[str, str] = {
    "shard": _AGAIN, "write": _AGAIN, "convert": _AGAIN,
    "scan": "nothing was replaced (the index is written whole or not at all); run the same command again to scan",
    "plan": "the plan is incomplete (work/plan.json, written last, marks a complete one); run the same command "
            "again to plan",
}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> OSError | None:
    """The 'no space left' error behind `exc` (itself, or what caused it: a worker's error comes back
    chained), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = 2


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if ctx.invoked_subcommand not in INTERRUPTED:
                raise
            click.echo(f"interrupted: {INTERRUPTED[ctx.invoked_subcommand]}", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
            # DatakitError, TrainerError, AnalysisError and FolderBusy all derive from it
            from tlxcore.errors import UserError as LibraryUserError

            if isinstance(exc, LibraryUserError):
                raise UserError(str(exc)) from exc
            if (full := disk_full(exc)) is not None:
                where = f" writing {full.filename}" if full.filename else ""
                raise UserError(f"no space left on device{where}: free space, then run the same command again "
                                "(--resume auto continues what was finished)") from exc
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tlx")
def cli() -> None:
    """tlx: DICOM CT -> leak-free WebDataset shards -> SimCLR pretraining -> downstream tasks -> analysis.

    \b
    Example, the whole flow on synthetic data:
      tlx synth --out cohort/ --patients 40
      export TLX_SECRET=...   # key for patient pseudonyms
      tlx shard --dicom-root cohort/ --out data/
      torchrun --nproc_per_node 8 -m trainer.simclr --data data/ --out runs/pretrain/x
      torchrun -m trainer.finetune --task radnet --data data/ --init runs/pretrain/x/checkpoints/last.pt
      tlx analyze runs/ --out report/
    """


if __name__ == "__main__":
    cli()
