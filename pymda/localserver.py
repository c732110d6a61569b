"""pymda-local: the one privileged step of delivery (Postfix's local(8)).

::

    pymda-local [-C FILE] [--listen PATH]

The queue runner runs as ``daemon_user`` and delivers in its own process
only into mailboxes that uid owns.  A mailbox owned by another uid is
delivered by this small service, which runs as root: for each request it
forks a child that becomes the mailbox owner (``mailbox_owner``: the
users-file uid/gid, else the Maildir's owner) *before* it reads anything
of the user's -- rules, ``.forward``, the paths in them -- and then
delivers as ``pymda-deliver`` would.

Requests come over a Unix stream socket (``--listen PATH``; or from
systemd, ``Accept=no`` with ``LISTEN_FDS``, or ``Accept=yes``/inetd with
the connection on fd 0).  Only root and ``daemon_user`` may connect
(SO_PEERCRED).  A request is one JSON line with the message's open queue
file passed as a descriptor (SCM_RIGHTS)::

    {"rcpt": "alice@example.test", "sender": "a@b.example", "orig": "...",
     "qid": "QUEUEID", "offset": 312, "once": false}

and the answer is one JSON line ``{"code": N, "text": "..."}`` where N is
a sysexits code (0 delivered, 75 try again, 67 no such user, ...).  The
child reads the message with ``pread`` from ``offset``: it shares the
descriptor's file offset with the runner, so it never moves it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from pymta.lib import log, sysexits
from pymta.lib.address import is_safe_envelope_field

MAX_REQUEST = 8192
MAX_CHILDREN = 64
REQUEST_TIMEOUT = 30.0


def socket_path(cfg) -> str:
    """Where pymda-local listens and the runner connects: ROOT/run/local.sock."""
    return os.path.join(str(cfg.root), "run", "local.sock")


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


def _valid_address(value, allow_empty: bool = False) -> bool:
    if not isinstance(value, str) or len(value) > 1000:
        return False
    if not value:
        return allow_empty
    return not value.startswith("-") and is_safe_envelope_field(value)  # not an option, not a line break


def parse_request(line: bytes) -> dict:
    """The request's fields, checked; ValueError for anything malformed."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(req, dict):
        raise ValueError("not an object")
    if not _valid_address(req.get("rcpt")) or "@" not in req["rcpt"]:
        raise ValueError("bad recipient")
    if not _valid_address(req.get("sender", ""), allow_empty=True):
        raise ValueError("bad sender")
    if not _valid_address(req.get("orig") or req["rcpt"]):
        raise ValueError("bad original recipient")
    qid = req.get("qid") or ""
    if not isinstance(qid, str) or len(qid) > 64 or (qid and not (qid.isascii() and qid.isalnum())):
        raise ValueError("bad queue ID")
    offset = req.get("offset", 0)
    if not isinstance(offset, int) or offset < 0:
        raise ValueError("bad offset")
    return {
        "rcpt": req["rcpt"],
        "sender": req.get("sender", ""),
        "orig": req.get("orig") or req["rcpt"],
        "qid": qid or None,
        "offset": offset,
        "once": bool(req.get("once")),
    }


def pread_chunks(fd: int, offset: int, size: int = 1 << 16):
    """The file from ``offset`` to its end, without moving the shared offset."""
    while True:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def deliver_request(cfg, req: dict, fd: int) -> tuple[int, str]:
    """In the forked child: become the mailbox owner, then deliver."""
    from pymda.deliver import DeliveryError, become_mailbox_owner, deliver_message, lookup_user  # noqa: PLC0415 lazy
    from pymta.lib.users import UsersFile  # noqa: PLC0415 lazy

    users = UsersFile(cfg.path_of("users"))
    try:
        record = lookup_user(users, req["rcpt"])
        if record is None:
            return sysexits.EX_NOUSER, f"{req['rcpt']}: no such user"
        become_mailbox_owner(cfg, record)
        path = deliver_message(
            cfg,
            users,
            req["rcpt"],
            pread_chunks(fd, req["offset"]),
            req["sender"],
            original=req["orig"],
            qid=req["qid"],
            record=record,
            once=req["once"],
        )
        return sysexits.EX_OK, f"delivered as uid {os.geteuid()} to {path}"
    except DeliveryError as exc:
        return exc.exit_code, str(exc)
    except OSError as exc:
        return sysexits.EX_TEMPFAIL, f"temporary failure: {exc}"
    except Exception as exc:  # never a lost message: the runner retries
        log.error(f"internal error: {type(exc).__name__}: {exc}", req.get("qid"))
        return sysexits.EX_TEMPFAIL, f"internal error: {type(exc).__name__}"


def _reply(conn: socket.socket, code: int, text: str) -> None:
    try:
        conn.sendall(json.dumps({"code": code, "text": text[:500]}).encode() + b"\n")
    except OSError:
        pass


def serve_connection(cfg, conn: socket.socket, allowed: set[int]) -> None:
    """One request on ``conn`` (in a process of its own: it switches users)."""
    uid = _peer_uid(conn)
    if uid not in allowed:
        log.warning(f"connection from uid {uid} refused (only {sorted(allowed)} may ask)")
        _reply(conn, sysexits.EX_NOPERM, "not allowed")
        return
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 1)
    except (OSError, ValueError) as exc:
        log.warning(f"bad request: {exc}")
        return
    try:
        if len(fds) != 1 or not data.endswith(b"\n"):
            raise ValueError("one line and one descriptor expected")
        req = parse_request(data)
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        log.warning(f"bad request from uid {uid}: {exc}")
        _reply(conn, sysexits.EX_USAGE, f"bad request: {exc}")
        return
    code, text = deliver_request(cfg, req, fds[0])
    os.close(fds[0])
    _reply(conn, code, text)


def allowed_uids(cfg) -> set[int]:
    allowed = {0}
    if cfg["daemon_user"]:
        import pwd  # noqa: PLC0415 lazy

        try:
            allowed.add(pwd.getpwnam(cfg["daemon_user"]).pw_uid)
        except KeyError:
            pass
    return allowed


def listen_unix(path: str, owner_uid: int | None) -> socket.socket:
    """A listening socket at ``path`` that only its owner (and root) can connect to."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if owner_uid is not None and os.geteuid() == 0:
        os.chown(path, owner_uid, -1)
    sock.listen(128)
    return sock


def serve(cfg, sock: socket.socket, allowed: set[int]) -> None:
    """Accept requests, one forked child each, at most MAX_CHILDREN at once."""
    from pymda.deliver import preload_delivery  # noqa: PLC0415 lazy

    preload_delivery()
    children: set[int] = set()
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        sock.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        while children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
        if len(children) >= MAX_CHILDREN:
            try:
                children.discard(os.waitpid(-1, 0)[0])
            except ChildProcessError:
                children.clear()
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            if stopping:
                break
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                sock.close()
                serve_connection(cfg, conn, allowed)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.add(pid)
        conn.close()
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymda-local")
    from pymta.lib.cliargs import click_main  # noqa: PLC0415 lazy

    return click_main(_command(), argv, "pymda-local")


def _command():
    import click  # noqa: PLC0415 lazy

    from pymta.lib.cliargs import CONFIG_HELP  # noqa: PLC0415 lazy

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("-C", "config_file", metavar="FILE", help=CONFIG_HELP)
    @click.option(
        "--listen",
        metavar="PATH",
        help="Listen on this Unix socket (default: ROOT/run/local.sock when not started by systemd or inetd).",
    )
    def command(config_file: str | None, listen: str | None) -> int:
        """Deliver into mailboxes of other uids for the queue runner (runs as root)."""
        return serve_main(config_file, listen)

    return command


def serve_main(config_file: str | None, listen: str | None) -> int:
    from pymta.lib import config  # noqa: PLC0415 lazy
    from pymta.lib.activation import fd_is_socket, listen_fds  # noqa: PLC0415 lazy

    cfg = config.load_logged(config_file)
    if cfg is None:
        return sysexits.EX_CONFIG
    allowed = allowed_uids(cfg)
    sockets = [] if listen else listen_fds()
    if not listen and not sockets and fd_is_socket(0):
        try:  # inetd / Accept=yes: the connection on fd 0 (not a listening socket)
            conn = socket.socket(fileno=os.dup(0))
            if not conn.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                serve_connection(cfg, conn, allowed)
                return sysexits.EX_OK
            sockets = [conn]
        except OSError as exc:
            log.error(f"fd 0: {exc}")
            return sysexits.EX_OSERR
    if not sockets:
        path = listen or socket_path(cfg)
        owner = max(allowed) if len(allowed) > 1 else None
        try:
            sockets = [listen_unix(path, owner)]
        except OSError as exc:
            log.error(f"cannot listen on {path}: {exc}")
            return sysexits.EX_OSERR
        log.info(f"listening on {path} (for uids {sorted(allowed)})")
    serve(cfg, sockets[0], allowed)
    return sysexits.EX_OK


if __name__ == "__main__":
    sys.exit(main())
