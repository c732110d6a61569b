"""`pymail stats`: the metrics, as the Prometheus text format, on stdout.

::

    pymail stats [DIR]            # what GET /metrics on listen.metrics answers
    pymail stats --compact [DIR]  # fold ROOT/run/metrics.log into metrics.base first

The text is made in pymta/metrics.py; the events come from
pymta/lib/metrics.py.  Useful for node_exporter's textfile collector
(``pymail stats > /var/lib/node_exporter/pymail.prom.tmp && mv ...``) where
no listener is wanted.
"""

from __future__ import annotations

import os

import click

from pymta import metrics
from pymta.cli import load_config
from pymta.lib import metrics as events
from pymta.lib.sysexits import EX_NOPERM, EX_OSERR


@click.command("stats")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("-C", "--config", "config_file", metavar="FILE", help="Config file, instead of DIR.")
@click.option("--compact", is_flag=True, help="Fold the event log into the totals first (the runner does it too).")
def command(directory, config_file, compact):
    """Print the metrics (Prometheus text format): sessions, logins, messages, queue, processes."""
    cfg = load_config(directory, config_file)
    try:
        if compact:
            events.compact(cfg.root)
        text = metrics.render(cfg, exclude_pid=os.getpid())
    except PermissionError as exc:
        click.echo(f"pymail: {exc.filename or ''}: permission denied (run as root or daemon_user)", err=True)
        raise click.exceptions.Exit(EX_NOPERM) from None
    except OSError as exc:
        click.echo(f"pymail: {exc}", err=True)
        raise click.exceptions.Exit(EX_OSERR) from None
    click.echo(text, nl=False)
