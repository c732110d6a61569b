"""The maildrop: the door into the queue for users who cannot write it.

``sendmail.maildrop`` (mode 1733, like Postfix's: anyone may create a file,
nobody may list or touch another's) holds files in the queue-file format
(JSON envelope line, then the message), written as ``.tmp-NAME`` and
renamed to ``NAME`` (the queue ID and 16 random hex digits).  ``.wake`` is
a datagram socket any local user may poke (like Postfix's public/pickup).

Two sides: sendmail writes (``MaildropQueue``, same interface as the
queue's writer) and pokes; the runner listens (``listen``) and picks the
files up (``pickup``): it takes the submitting uid from the file's owner
(which the user cannot forge), validates the envelope again, keeps only a
few known meta fields, and marks a sender address that does not belong to
that user with an ``X-Authentication-Warning:`` header and a log line.  A
file it refuses after reading the envelope is bounced to its owner
(``pymta.maildrop_bounce``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pymta.lib import log
from pymta.lib.address import qualify
from pymta.recipient import Status

PICKUP_META = ("notify", "body", "envid", "ret", "protocol", "full_name")
WAKE_NAME = ".wake"
MAILQ_NAME = ".mailq"  # the runner lists the queue to whoever connects (mailq for ordinary users)
TMP_PREFIX = ".tmp-"


def folder(cfg) -> Path:
    return cfg.root / cfg["sendmail.maildrop"]


# -- the writing side (sendmail) -----------------------------------------------------------


class MaildropWriter:
    """Same interface as QueueWriter, writing to the maildrop folder."""

    def __init__(self, maildrop, sender: str, recipients: list[str], meta: dict, queue_id: str = "") -> None:
        from pymta.queue import Envelope, QueueError, make_queue_id  # noqa: PLC0415 lazy

        self.maildrop = maildrop
        self.queue_id = queue_id or make_queue_id()
        self.name = f"{self.queue_id}{os.urandom(8).hex().upper()}"
        self.tmp = maildrop / f"{TMP_PREFIX}{self.name}"
        self.closed = False
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise QueueError(f"cannot write to the maildrop {maildrop}: {exc.strerror}") from None
        env = Envelope(sender, list(recipients), self.queue_id, time.time(), meta)
        try:
            self.write(env.to_line())
        except ValueError as exc:
            self.abort()
            raise QueueError(str(exc)) from None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self) -> str:
        from pymta.lib.fsutil import fsync_dir  # noqa: PLC0415 lazy

        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.maildrop / self.name)
        try:
            fsync_dir(self.maildrop)
        except PermissionError:
            pass  # a 1733 folder cannot be opened by its users; the file itself is fsynced
        self.closed = True
        poke(self.maildrop)
        return self.queue_id

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class MaildropQueue:
    def __init__(self, maildrop) -> None:
        self.maildrop = maildrop

    def writer(self, sender, recipients, meta=None, queue_id: str = "") -> MaildropWriter:
        """``queue_id`` as ``Queue.writer``'s: the ID smtpd chose at MAIL (sendmail -bs)."""
        return MaildropWriter(self.maildrop, sender, recipients, meta or {}, queue_id)

    def enqueue(self, sender, recipients, data: bytes, meta=None) -> str:
        w = self.writer(sender, recipients, meta)
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise


def received_field(cfg, uid: int, queue_id: str) -> bytes:
    """The ``Received:`` field of locally submitted mail, as Postfix's
    cleanup writes it for its pickup: ``by HOST (pymail, from userid N) id
    QID; DATE``.  Made by whoever knows the uid for sure: sendmail for a
    caller that writes the queue itself, the pickup (from the file's owner)
    for the maildrop, whose files a user can write by hand."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S %z")
    return f"Received: by {cfg['hostname']} (pymail, from userid {uid})\n\tid {queue_id}; {date}\n".encode()


def poke(maildrop) -> None:
    """Wake the runner's pickup; silent if no runner listens."""
    import socket  # noqa: PLC0415 lazy

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"*", str(maildrop / WAKE_NAME))
    except OSError:
        pass


# -- the runner's side -----------------------------------------------------------------------


def ensure(cfg) -> Path | None:
    """The maildrop folder (mode 1733, made on first use), or None when it cannot be had."""
    maildrop = folder(cfg)
    if not maildrop.is_dir():
        try:
            os.mkdir(maildrop, 0o700)
            os.chmod(maildrop, 0o1733)
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning(f"cannot create the maildrop {maildrop}: {exc.strerror}")
            return None
    return maildrop


def listen(cfg, name: str = WAKE_NAME):
    """The bound ``.wake`` datagram socket, or with ``name=MAILQ_NAME`` the
    listening ``.mailq`` stream socket (mode 0666, non-blocking), or None."""
    import socket  # noqa: PLC0415 lazy

    maildrop = ensure(cfg)
    if maildrop is None:
        return None
    path = maildrop / name
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    drop = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if name == MAILQ_NAME else socket.SOCK_DGRAM)
    try:
        drop.bind(str(path))
        os.chmod(path, 0o666)
        if name == MAILQ_NAME:
            drop.listen(16)
    except OSError as exc:
        log.warning(f"cannot listen on {path}: {exc}")
        drop.close()
        return None
    drop.setblocking(False)
    return drop


def ask_runner_for_mailq(maildrop, timeout: float = 30.0) -> str:
    """The queue listing from the running queue runner (``.mailq`` in the
    maildrop): how an ordinary user, who may not read the queue, runs
    mailq.  OSError when no runner answers, or when the socket is not the
    maildrop owner's (another user's socket in the 1733 folder)."""
    import socket  # noqa: PLC0415 lazy

    path = maildrop / MAILQ_NAME
    if os.stat(path).st_uid != os.stat(maildrop).st_uid:
        raise OSError(f"{path} does not belong to the maildrop's owner")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def user_name(uid: int) -> str:
    import pwd  # noqa: PLC0415 lazy

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def sender_belongs_to(cfg, uid: int, user: str, sender: str) -> bool:
    if uid == 0 or uid == os.getuid():
        return True  # root and the mail system itself may set any sender
    if sender == "":
        return False
    from pymta.senders import sender_owned  # noqa: PLC0415 lazy

    return sender_owned(cfg, user, sender)  # NAME@ a local domain or the host, and aliases leading to NAME


def submitter_address(cfg, uid: int, user: str, sender: str) -> str:
    """Where a refused file's bounce goes: the envelope sender when it is the
    user's own, else the user's login at the first local domain -- never a
    sender the user made up (that would make the maildrop a backscatter tool)."""
    if sender and sender_belongs_to(cfg, uid, user, sender):
        return sender
    return qualify(cfg, user)


class Refused(ValueError):
    """A maildrop file the pickup will not queue, with the status its bounce reports."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.text)
        self.status = status


def pickup(cfg, queue, maildrop, max_age: float = 86400.0) -> int:
    """Move maildrop files into the queue; returns how many were queued."""
    try:
        names = os.listdir(maildrop)
    except OSError:
        return 0
    count = 0
    for name in sorted(names):
        path = maildrop / name
        if name.startswith("."):
            if name.startswith(TMP_PREFIX):
                _remove_if_older(path, max_age)
            continue
        if _pick_up_one(cfg, queue, path):
            count += 1
    return count


def _remove_if_older(path: Path, max_age: float) -> None:
    try:
        if time.time() - os.lstat(path).st_mtime > max_age:
            os.unlink(path)
    except OSError:
        pass


def _pick_up_one(cfg, queue, path: Path) -> bool:
    """Queue one maildrop file (True), or refuse, bounce and remove it, or keep it for later (False)."""
    import stat  # noqa: PLC0415 lazy

    from pymta.lib.address import valid_envelope_address as valid_address  # noqa: PLC0415 lazy
    from pymta.lib.sizelimit import TooBig, read_at_most  # noqa: PLC0415 lazy
    from pymta.queue import ENVELOPE_MAX, Envelope, is_queue_id  # noqa: PLC0415 lazy

    name = path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.warning(f"maildrop: cannot open {name}: {exc.strerror}; removed")
        _unlink(path)
        return False
    limit = cfg["smtpd.max_message_size"]
    max_rcpts = cfg["smtpd.max_recipients"]
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        uid = st.st_uid
        user = user_name(uid)
        env = None  # once the envelope is read, a refusal is bounced to the user
        try:
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise ValueError("not a plain file")
            line = fh.readline(ENVELOPE_MAX)
            if not line.endswith(b"\n"):
                raise ValueError("no envelope")
            env = Envelope.from_line(line)
            if not valid_address(env.sender, allow_null=True):
                raise Refused(Status.of("5.1.7", f"bad sender address {env.sender!r}"))
            if not env.recipients or not all(valid_address(r) for r in env.recipients):
                raise Refused(Status.of("5.1.3", "bad recipient address syntax"))
            if len(env.recipients) > max_rcpts:
                raise Refused(
                    Status.of(
                        "5.5.3", f"too many recipients ({len(env.recipients)}; smtpd.max_recipients is {max_rcpts})"
                    )
                )
            try:
                # counted while reading: the owner may grow the file at any time (no fstat size)
                body = read_at_most(fh, limit)
            except TooBig:
                raise Refused(
                    Status.of("5.3.4", f"message file too big (smtpd.max_message_size is {limit} octets)")
                ) from None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning(f"maildrop: uid={uid} ({user}): file {name} refused: {exc}")
            if env is not None:
                from pymta.maildrop_bounce import bounce_refused  # noqa: PLC0415 lazy

                status = exc.status if isinstance(exc, Refused) else Status.from_text(str(exc))
                to = submitter_address(cfg, uid, user, env.sender)
                bounce_refused(cfg, queue, path, fh, len(line), env, to, status)
            _unlink(path)
            return False
        from pymta.lib.sendrate import charge_local_user  # noqa: PLC0415 lazy

        over = charge_local_user(cfg, uid, len(env.recipients))
        if over:  # a 4xx, not a refusal: kept, and picked up on a later pass once the hour allows
            log.warning(
                f"maildrop: uid={uid} ({user}): file {name} kept: rate limit exceeded (submission.max_{over}_per_hour)"
            )
            return False
        meta = {k: v for k, v in env.meta.items() if k in PICKUP_META and isinstance(v, str) and len(v) < 200}
        meta.update({"client": "local", "service": "pickup", "uid": uid, "user": user})
        prefix = b""
        if not sender_belongs_to(cfg, uid, user, env.sender):
            meta["sender_unverified"] = True
            prefix = (
                f"X-Authentication-Warning: {cfg['hostname']}: {user} set sender to <{env.sender}> using -f\n"
            ).encode()
            log.warning(f"uid={uid} ({user}) set sender to <{env.sender}>, which is not theirs")
        writer = queue.writer(env.sender, env.recipients, meta)
        try:
            text = received_field(cfg, uid, writer.queue_id) + prefix + body
            if cfg["milter.non_smtpd_milters"]:
                from pymta.milters import filter_local  # noqa: PLC0415 lazy
                from pymta.smtp_server import Refused as MilterRefused  # noqa: PLC0415 lazy

                try:
                    qid = filter_local(cfg, writer, env.sender, env.recipients, text)
                except MilterRefused as exc:
                    writer.abort()
                    reply = exc.reply
                    if reply.code < 500:  # kept, and picked up again on a later pass
                        log.warning(f"maildrop: uid={uid} ({user}): file {name} kept: milter said {reply.code}")
                        return False
                    from pymta.maildrop_bounce import bounce_refused  # noqa: PLC0415 lazy

                    status = Status.of(reply.enhanced or "5.7.1", f"refused by a milter: {reply.code} {reply.text}")
                    log.warning(f"maildrop: uid={uid} ({user}): file {name} refused: {status.text}")
                    bounce_refused(
                        cfg, queue, path, fh, len(line), env, submitter_address(cfg, uid, user, env.sender), status
                    )
                    _unlink(path)
                    return False
            else:
                writer.write(text)
                qid = writer.commit()
        except BaseException:
            writer.abort()
            raise
        was = f", submitted as {env.queue_id}" if is_queue_id(env.queue_id) else ""
        log.info(
            f"uid={uid}, user={user}, from=<{env.sender}>, nrcpt={len(env.recipients)} (queued from maildrop{was})", qid
        )
    _unlink(path)
    return True


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
