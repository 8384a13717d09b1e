"""`tlx secret new [FILE]` and `tlx secret check DATA...` (library: datakit.secret). Never prints a key."""
from __future__ import annotations

import click


@click.group(epilog="""\b
Example:
  tlx secret new ~/.config/tlx/secret                # 32 random bytes, mode 0600; back it up
  tlx shard --dicom-root /pacs/export --out data/ --secret-file ~/.config/tlx/secret
  tlx secret check data/ other/ --secret-file ~/.config/tlx/secret   # before joining datasets
""")
def secret():
    """The pseudonym secret: make a strong one, or check which datasets it made.

    Patient ids and UIDs become HMAC pseudonyms under this key. Keep it (the same key gives
    the same pseudonyms, so datasets can be extended and joined) and never share it: with
    the key, pseudonyms of short ids can be reversed. Keys under 16 bytes (32 hex digits)
    are refused.
    """


@secret.command("new")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=str))
def new(file):
    """Write a fresh key to FILE (default ~/.config/tlx/secret), readable by you only.

    32 random bytes from the operating system, as 64 hex digits. An existing FILE is never
    replaced. The key is not printed; only the file and the key's fingerprint are.
    """
    from rich.console import Console

    from datakit.secret import (
        default_secret_path,
        fingerprint,
        load_secret,
        new_secret_file,
    )

    path = new_secret_file(file if file is not None else default_secret_path())
    console = Console(highlight=False)
    console.print(f"wrote a new pseudonym key to {path} (mode 0600, fingerprint "
                  f"{fingerprint(load_secret(path))})", markup=False)
    console.print(f"use it with --secret-file {path}; back it up: datasets made with it can only be extended "
                  "or joined with this key", markup=False)


@secret.command("check")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="File holding the pseudonym secret (default: env TLX_SECRET).")
def check(datasets, secret_file):
    """Check that each DATASET was made with this secret (its recorded fingerprint); exit 2 at the first
    that was not, naming it. Datasets made under one secret can be joined: a patient has one pseudonym."""
    from rich.console import Console

    from datakit.secret import check_dataset_secret, load_secret

    key = load_secret(secret_file)
    console = Console(highlight=False)
    for dataset in datasets:
        check_dataset_secret(dataset, key)
        console.print(f"{dataset}: made with this secret", markup=False)
