"""`pymail autoconfig`: client autoconfiguration, as files or from a small listener.

::

    pymail autoconfig --out DIR            # write the answers for an existing web server
    pymail autoconfig --listen HOST:PORT   # serve them in the foreground (Ctrl-C stops)

The answers are made in pymta/autoconfig.py, served by pymta/autoconfig_http.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from pymta import autoconfig
from pymta.cli import load_config
from pymta.lib import config, log
from pymta.lib.sysexits import EX_CANTCREAT, EX_CONFIG, EX_OSERR, EX_USAGE


def _fail(message: str, code: int):
    click.echo(f"pymail: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.command("autoconfig")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("-C", "--config", "config_file", metavar="FILE", help="Config file, instead of DIR.")
@click.option("--out", "out", metavar="OUTDIR", help="Write the answers as files under OUTDIR (a document root).")
@click.option(
    "--listen",
    "listen",
    metavar="HOST:PORT",
    help="Serve the answers over HTTP (HTTPS with autoconfig.tls) in the foreground.",
)
def command(directory, config_file, out, listen):
    """Client autoconfiguration (Thunderbird, Outlook, Apple) for this server."""
    if bool(out) == bool(listen):
        _fail("give one of --out OUTDIR or --listen HOST:PORT", EX_USAGE)
    cfg = load_config(directory, config_file)
    try:
        settings = autoconfig.settings(cfg)
    except autoconfig.AutoconfigError as exc:
        _fail(str(exc), EX_CONFIG)
    if out:
        try:
            written = autoconfig.write_static(settings, Path(out))
        except OSError as exc:
            _fail(f"{out}: {exc.strerror or exc}", EX_CANTCREAT)
        for path in written:
            click.echo(path)
        return
    from pymta import autoconfig_http  # noqa: PLC0415 lazy
    from pymta.lib import activation  # noqa: PLC0415 lazy

    try:
        sock = activation.open_listener(*config.parse_listen(listen))
    except ValueError as exc:
        _fail(f"--listen: {exc}", EX_USAGE)
    except OSError as exc:
        _fail(f"--listen {listen}: {exc.strerror or exc}", EX_OSERR)
    log.set_program("pymail autoconfig")
    raise click.exceptions.Exit(autoconfig_http.serve(cfg, sock))
