"""`pymail dkim ...`: DKIM keys for signing outbound mail.

::

    pymail dkim keygen DOMAIN SELECTOR   # make DKIM_DIR/DOMAIN/SELECTOR.key, print the TXT record
    pymail dkim record DOMAIN SELECTOR   # print the TXT record of an existing key
"""

from __future__ import annotations

import click

from pymta.cli import load_config
from pymta.lib.sysexits import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT


@click.group("dkim")
def command():
    """DKIM keys for signing outbound mail."""


def _cfg():
    return load_config(None, None)


@command.command("keygen")
@click.argument("domain")
@click.argument("selector")
@click.option("--bits", default=2048, show_default=True, type=click.IntRange(1024, 4096), help="RSA key size.")
def keygen(domain, selector, bits):
    """Make a key for DOMAIN and SELECTOR and print the DNS TXT record to publish."""
    from pymta import dkim_sign  # noqa: PLC0415 lazy

    cfg = _cfg()
    try:
        path, record = dkim_sign.keygen(cfg, domain, selector, bits)
    except dkim_sign.DKIMError as exc:
        click.echo(f"pymail: {exc}", err=True)
        raise click.exceptions.Exit(
            EX_CANTCREAT if "exists" in str(exc) or "openssl" in str(exc) else EX_DATAERR
        ) from None
    click.echo(f"; key written to {path}", err=True)
    if cfg["dkim.selector"] != selector:
        click.echo(f'; set dkim.selector = "{selector}" in the config to sign with it', err=True)
    click.echo(record)


@command.command("record")
@click.argument("domain")
@click.argument("selector")
def record(domain, selector):
    """Print the DNS TXT record for an existing key."""
    from pymta import dkim_sign  # noqa: PLC0415 lazy

    cfg = _cfg()
    try:
        path = dkim_sign.key_path(cfg, domain, selector)
        if not path.exists():
            raise dkim_sign.DKIMError(f"{path}: no such key")
        click.echo(dkim_sign.dns_record(path, selector, domain))
    except dkim_sign.DKIMError as exc:
        click.echo(f"pymail: {exc}", err=True)
        raise click.exceptions.Exit(EX_NOINPUT) from None
