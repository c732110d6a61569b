"""`pymail queue ...`: look at and manage the mail queue.

::

    pymail queue list              # mailq's listing
    pymail queue show ID           # envelope, per-recipient state, message
    pymail queue delete ID|ALL
    pymail queue hold ID|ALL
    pymail queue release ID|ALL
    pymail queue flush             # every deferred entry: retry now
    pymail queue requeue ID|ALL    # retry now with a fresh retry schedule

An entry a runner is delivering right now is locked; the tools wait a
moment for the lock and otherwise say so (exit 75) rather than pull the
file from under the runner.
"""

from __future__ import annotations

import json
import sys
import time

import click

from pymta.cli import load_config as _load
from pymta.lib import log
from pymta.lib.sysexits import EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL
from pymta.queue import Queue, is_queue_id
from pymta.recipient import DEFERRED, PENDING


def _cfg(ctx):
    return _load(None, None)


def _queue(cfg):
    return Queue(cfg.queue_dir)


def _ids(queue, which: str) -> list[str]:
    if which.upper() == "ALL":
        return [p.name for _, p in queue.all_entries()]

    if not is_queue_id(which):
        click.echo(f"pymail: {which!r} is not a queue ID", err=True)
        raise click.exceptions.Exit(EX_DATAERR)
    return [which]


def _each(queue, which: str, action, verb: str) -> None:
    problems = 0
    busy = False
    done = 0
    for qid in _ids(queue, which):
        entry, why = queue.lock_entry(qid)
        if entry is None:
            click.echo(f"pymail: {qid}: {why}", err=True)
            problems += 1
            busy = why.startswith("busy")
            continue
        with entry:
            action(entry)
        done += 1

        log.info(f"{verb} by the administrator", qid)
    click.echo(f"{done} entr{'y' if done == 1 else 'ies'} {verb}")
    if problems and which.upper() != "ALL":
        raise click.exceptions.Exit(EX_TEMPFAIL if busy else EX_NOINPUT)


@click.group("queue")
def command():
    """Look at and manage the mail queue."""


@command.command("list")
def list_cmd():
    """List the queue in mailq's layout."""
    from pymta.sendmail import format_mailq  # noqa: PLC0415 lazy

    sys.stdout.write(format_mailq(_queue(_cfg(None))))


@command.command("show")
@click.argument("queue_id")
def show(queue_id):
    """Show an entry: envelope, recipient state and message."""
    queue = _queue(_cfg(None))
    [qid] = _ids(queue, queue_id)
    path = queue.locate(qid)
    if path is None:
        click.echo(f"pymail: {qid}: not found", err=True)
        raise click.exceptions.Exit(EX_NOINPUT)
    entry = queue.open_entry(path, lock=False)
    if entry is None:
        click.echo(f"pymail: {qid}: not found", err=True)
        raise click.exceptions.Exit(EX_NOINPUT)
    with entry:
        env = entry.envelope
        click.echo(
            f"queue-id: {qid}\nqueue: {entry.where}\nsize: {entry.size}\n"
            f"arrival: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(env.arrival))}\n"
            f"sender: <{env.sender}>"
        )
        for rcpt in env.recipients:
            click.echo(f"recipient: <{rcpt}>")
        click.echo(f"meta: {json.dumps(env.meta, sort_keys=True)}")
        state = queue.load_state(qid)
        if state:
            for r in state.rcpts:
                click.echo(f"state: <{r.to}> {r.state} attempts={r.attempts} {r.reason}".rstrip())
            if state.next:
                click.echo(f"next-attempt: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(state.next))}")
        click.echo("")
        sys.stdout.flush()
        for chunk in entry.message_chunks():
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@command.command("delete")
@click.argument("which", metavar="ID|ALL")
def delete(which):
    """Delete an entry (or ALL) without delivering or bouncing it."""
    queue = _queue(_cfg(None))
    _each(queue, which, queue.remove, "deleted")


@command.command("hold")
@click.argument("which", metavar="ID|ALL")
def hold(which):
    """Put an entry (or ALL) on hold: the runner leaves it alone."""
    queue = _queue(_cfg(None))

    def act(entry):
        if entry.where != "hold":
            queue.move(entry.envelope.queue_id, "hold")

    _each(queue, which, act, "held")


def _to_new(queue, entry, reset: bool = False) -> None:
    qid = entry.envelope.queue_id
    if reset:
        state = queue.load_state(qid)
        if state:
            for r in state.rcpts:
                if r.state in (DEFERRED, PENDING):
                    r.attempts = 0
            state.next = 0.0
            queue.save_state(qid, state)
    if entry.where != "new":
        queue.move(qid, "new")


@command.command("release")
@click.argument("which", metavar="ID|ALL")
def release(which):
    """Release held entries: they are tried at once."""
    queue = _queue(_cfg(None))

    def act(entry):
        if entry.where == "hold":
            _to_new(queue, entry)

    _each(queue, which, act, "released")
    queue.wake()


@command.command("flush")
def flush():
    """Retry every deferred entry now (held ones stay held)."""
    queue = _queue(_cfg(None))
    count = queue.flush()
    queue.wake()
    click.echo(f"{count} entr{'y' if count == 1 else 'ies'} scheduled for delivery")


@command.command("requeue")
@click.argument("which", metavar="ID|ALL")
def requeue(which):
    """Retry now and restart the retry schedule (routing is looked up afresh)."""
    queue = _queue(_cfg(None))

    def act(entry):
        if entry.where != "hold":
            _to_new(queue, entry, reset=True)

    _each(queue, which, act, "requeued")
    queue.wake()
