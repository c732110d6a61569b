"""Local delivery from the queue runner: the one seam between pymta and pymda.

The runner never runs as root (it becomes ``daemon_user``), so for each
local recipient it picks the way that keeps every user's rules running as
that user:

* **in process** -- the mailbox belongs to the runner's own uid (the
  single "vmail" uid of virtual setups) and ``deliver.mode`` is
  ``inprocess``: the runner writes the Maildir and runs the rules itself;
* **pymda-deliver** -- ``deliver.mode = "exec"`` and the same uid, or a
  runner explicitly configured to stay root (``daemon_user = "root"``):
  a child process, which as root switches to the mailbox owner first;
* **pymda-local** -- any other owner: the request goes to the privileged
  delivery service over ``ROOT/run/local.sock``, which forks, switches to
  the owner and delivers (Postfix's qmgr -> local(8)).

``how(record)`` names the way for ``pymail config check``.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys

from pymda.deliver import DeliveryError, deliver_message, lookup_user, mailbox_owner
from pymda.localserver import socket_path
from pymta.lib import sysexits

INPROCESS, EXEC, SERVICE = "in process", "pymda-deliver", "pymda-local"


class LocalDelivery:
    def __init__(self, cfg, users, uid: int | None = None) -> None:
        self.cfg = cfg
        self.users = users
        self.uid = os.geteuid() if uid is None else uid  # the runner's

    def how(self, record) -> str:
        """Which way a delivery to ``record`` goes (see the module doc)."""
        owner, _ = mailbox_owner(self.cfg, record)
        if owner == self.uid:
            return INPROCESS if self.cfg["deliver.mode"] == "inprocess" else EXEC
        return EXEC if self.uid == 0 else SERVICE  # root's child switches to the owner itself

    def deliver(self, entry, rcpt: str, orig: str, once: bool) -> str:
        """Deliver ``entry``'s message to the local user ``rcpt``; raises DeliveryError."""
        env = entry.envelope
        record = lookup_user(self.users, rcpt)
        if record is None:
            raise DeliveryError(f"{rcpt}: no such user", sysexits.EX_NOUSER)
        way = self.how(record)
        if way == INPROCESS:
            deliver_message(
                self.cfg,
                self.users,
                rcpt,
                entry.message_chunks(),
                env.sender,
                original=orig,
                qid=env.queue_id,
                record=record,
                once=once,
            )
        elif way == EXEC:
            self._quota_precheck(record, entry)
            self._exec(entry, rcpt, orig, once)
        else:
            self._service(entry, rcpt, orig, once)
        return way

    def _quota_precheck(self, record, entry) -> None:
        """pymda-deliver says only 75 when the user is over quota: look first
        (reading, never writing: this may be root), so the deferral says 4.2.2."""
        if not (record.fields or self.cfg.get("quota.default_rule")):
            return
        from pymda import quota  # noqa: PLC0415 lazy
        from pymda.deliver import over_quota, user_maildir  # noqa: PLC0415 lazy

        limits = quota.limits_of(self.cfg, record)
        if any(limits):
            box = user_maildir(self.cfg.mail_dir, record.address)
            if quota.over(quota.usage(box, limits, write=False), limits, entry.size):
                raise over_quota(record.address)

    def _exec(self, entry, rcpt: str, orig: str, once: bool) -> None:
        env = entry.envelope
        cmd = [
            sys.executable,
            "-m",
            "pymda.deliver",
            "-d",
            rcpt,
            "-f",
            env.sender,
            "-a",
            orig,
            "--queue-id",
            env.queue_id,
        ]
        if once:
            cmd.append("--once")
        if self.cfg.path:
            cmd[3:3] = ["-C", str(self.cfg.path)]
        # The child reads the descriptor itself: move its offset with lseek.  A
        # buffered seek() inside the envelope line's read-ahead moves only the
        # buffer, leaving the descriptor at the read-ahead's end (an empty or
        # truncated message for pymda-deliver).
        os.lseek(entry.fh.fileno(), entry.offset, os.SEEK_SET)
        try:
            proc = subprocess.run(cmd, stdin=entry.fh, stdout=subprocess.DEVNULL, timeout=self._timeout())
        except subprocess.TimeoutExpired:
            raise DeliveryError("pymda-deliver timed out", sysexits.EX_TEMPFAIL, uncertain=True) from None
        except OSError as exc:
            raise DeliveryError(f"cannot run pymda-deliver: {exc}", sysexits.EX_TEMPFAIL) from None
        if proc.returncode != 0:  # killed by a signal: it may have delivered just before
            raise DeliveryError(
                f"pymda-deliver exited {proc.returncode}", _known_code(proc.returncode), uncertain=proc.returncode < 0
            )

    def _service(self, entry, rcpt: str, orig: str, once: bool) -> None:
        env = entry.envelope
        path = socket_path(self.cfg)
        request = (
            json.dumps(
                {
                    "rcpt": rcpt,
                    "sender": env.sender,
                    "orig": orig,
                    "qid": env.queue_id,
                    "offset": entry.offset,
                    "once": once,
                }
            ).encode()
            + b"\n"
        )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10.0)
                sock.connect(path)
                socket.send_fds(sock, [request], [entry.fh.fileno()])
                sock.settimeout(self._timeout())
                answer = b""
                while not answer.endswith(b"\n") and len(answer) < 4096:
                    data = sock.recv(4096)
                    if not data:
                        break
                    answer += data
        except (OSError, TimeoutError) as exc:  # before the request went out, or while it was being served
            raise DeliveryError(
                f"mailbox of {rcpt} belongs to another uid, and the privileged delivery "
                f"service pymda-local does not answer at {path}: {exc}",
                sysexits.EX_TEMPFAIL,
                uncertain=True,
            ) from None
        try:
            reply = json.loads(answer)
            code, text = int(reply["code"]), str(reply.get("text", ""))
        except (ValueError, KeyError, TypeError):
            raise DeliveryError(
                "pymda-local gave no answer (it may have been killed)", sysexits.EX_TEMPFAIL, uncertain=True
            ) from None
        if code != 0:
            from pymda.quota import TEXT  # noqa: PLC0415 lazy

            raise DeliveryError(f"pymda-local: {text}", _known_code(code), enhanced="4.2.2" if TEXT in text else "")

    def _timeout(self) -> float:
        return self.cfg["deliver.pipe_timeout"] + 300.0


def runner_uid(cfg) -> int | None:
    """The uid the queue runner will deliver as (None: daemon_user unknown)."""
    name = cfg["daemon_user"]
    if not name:
        return os.geteuid()

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def describe(cfg, users) -> list[str]:
    """What ``pymail config check`` says about local delivery: who the runner
    runs as, and which way each user's mail goes, and why."""
    uid = runner_uid(cfg)
    if uid is None:
        return []
    who = f"daemon_user {cfg['daemon_user']}" if cfg["daemon_user"] else "the user that starts it"
    lines = [f"qrunner runs as uid {uid} ({who})"]
    if uid == 0:
        lines[0] += "; it delivers into other users' mailboxes through pymda-deliver, which becomes their owner"
    delivery = LocalDelivery(cfg, users, uid)
    ways: dict[str, list[str]] = {}
    for record in users.list():
        try:
            owner, _ = mailbox_owner(cfg, record)
            way = delivery.how(record)
        except DeliveryError:
            continue
        ways.setdefault(way, []).append(f"{record.address} (uid {owner})")
    why = {
        INPROCESS: f"mailbox owned by the runner's uid {uid}, deliver.mode = inprocess",
        EXEC: "a separate process (deliver.mode = exec, or a mailbox owned by another uid while the runner is root)",
        SERVICE: "mailbox owned by another uid: the privileged pymda-local becomes the owner",
    }
    for way, who_list in ways.items():
        shown = ", ".join(who_list[:5]) + (f" and {len(who_list) - 5} more" if len(who_list) > 5 else "")
        lines.append(f"delivery {way}: {shown} -- {why[way]}")
    return lines


def _known_code(code: int) -> int:
    return code if code in sysexits.PERMANENT else sysexits.EX_TEMPFAIL
