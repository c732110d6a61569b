"""Per-client connection limits under inetd and systemd ``Accept=yes``.

There every connection is a process of its own, so the counts of
``connlimit`` (a table in memory shared by the workers of one listening
daemon) live on disk instead: one small file per client and service,
``ROOT/run/clients/SERVICE/KEY`` (KEY: ``connlimit.client_key`` in hex --
an IPv4 address, an IPv6 /84), holding one line::

    WINDOW_START WINDOW_COUNT PID:START PID:START ...

the start (wall clock) of the current rate window and the connections made
in it (refused ones too, as anvil counts them), then the processes serving
that client now, each with its start time (``/proc/PID/stat`` field 22)
so that a reused pid is not taken for the old session.  A connection reads
and rewrites the file in place under ``flock`` (write, then truncate to
the new length: a crash never leaves it empty), and takes out its pid at
the end.  A process killed before that is dropped by the next connection
that finds the client at its limit: it checks each pid listed and forgets
those gone (or zombies).

A file that cannot be made or read (full disk, wrong owner) lets the
client through, with one log line; a corrupt one counts as empty and is
rewritten.  Now and then (one session end in ``PRUNE_ONE_IN``) the
directory is swept of files whose window is over and whose processes are
all gone, so it holds about the clients of the last time unit.

This runs at the start of every inetd connection: no asyncio, ssl, hashlib
or mapping, a few system calls (tests/unit/test_inetdlimit.py times it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import time

from pymta.lib import connlimit, log
from pymta.lib.sansio import CLOSE, Protocol

PRUNE_ONE_IN = 100  # session ends that sweep the directory of stale files
MAX_STATE_BYTES = 64 * 1024  # more than any real file holds: the rest is junk


def from_config(cfg, section: str, service: str) -> InetdLimits | None:
    """The limits of daemon ``section`` (smtpd, pop3d, imapd), or None when both are off."""
    sessions = cfg[f"{section}.max_sessions_per_client"]
    rate = cfg[f"{section}.connection_rate_per_client"]
    if not sessions and not rate:
        return None
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in service).lstrip(".") or "_"
    return InetdLimits(
        os.path.join(cfg.root, "run", "clients", name),
        service,
        sessions,
        rate,
        cfg["limits.rate_time_unit"],
        cfg["limits.exempt_networks"],
    )


class Refusal(Protocol):
    """The session of a client over its limits: the refusal, then hang up."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def connection_made(self, info) -> list:
        return [self.reply, CLOSE]

    def data_received(self, data: bytes) -> list:
        return [CLOSE]


class InetdLimits:
    def __init__(
        self,
        directory: str,
        service: str,
        max_sessions: int,
        rate: int,
        rate_time_unit: float,
        exempt_networks: list[str],
    ) -> None:
        self.dir = directory
        self.service = service
        self.max_sessions = max_sessions  # 0: no limit
        self.rate = rate  # 0: no limit
        self.rate_time_unit = rate_time_unit
        self.exempt = [ipaddress.ip_network(net, strict=False) for net in exempt_networks]
        self.path = ""  # this connection's file, once counted in it
        self.me = ""  # "PID:START", once listed in it

    def admit(self, ip: str) -> bool:
        """Count this process's connection from ``ip``; False: refuse it
        (the reason is logged, one line, as ``connlimit`` does)."""
        key = connlimit.client_key(ip, self.exempt)
        if key is None:
            return True
        path = os.path.join(self.dir, f"{key:016x}")
        me = f"{os.getpid()}:{_start_time('self')}" if self.max_sessions else ""
        verdict = True

        def take(start: float, count: int, pids: list[str], now: float):
            nonlocal verdict
            if self.rate:
                if _window_over(start, now, self.rate_time_unit):
                    start, count = now, 0
                count += 1
                if count > self.rate:
                    log.warning(f"connection rate limit exceeded: {count} from [{ip}] for service {self.service}")
                    verdict = False
                    return start, count, pids
            if self.max_sessions:
                if len(pids) >= self.max_sessions:
                    pids = [p for p in pids if _alive(p)]
                if len(pids) >= self.max_sessions:
                    log.warning(
                        f"connection concurrency limit exceeded: {len(pids) + 1} from [{ip}] for service {self.service}"
                    )
                    verdict = False
                    return start, count, pids
                pids.append(me)
            return start, count, pids

        if not self._update(path, take, ip):
            return True  # a file we cannot use never refuses anyone (logged)
        if verdict and me:
            self.path, self.me = path, me
        return verdict

    def release(self) -> None:
        """The session has ended: take its pid out (best effort), and now and
        then sweep the directory."""
        if self.path:
            me = self.me

            def without_me(start: float, count: int, pids: list[str], now: float):
                return start, count, [p for p in pids if p != me]

            self._update(self.path, without_me, "")
            self.path = self.me = ""
        if int.from_bytes(os.urandom(2), "little") % PRUNE_ONE_IN == 0:
            self.prune()

    # -- the files ----------------------------------------------------------------------
    def _update(self, path: str, change, ip: str) -> bool:
        """Read ``path``, apply ``change(start, count, pids, now)``, write it
        back, all under flock; False when the file could not be used."""
        try:
            fd = self._open_locked(path)
        except OSError as exc:
            if ip:
                log.warning(
                    f"client limits: cannot use {path}: {exc.strerror or exc}; "
                    f"connection from [{ip}] not counted for service {self.service}"
                )
            return False
        try:
            data = os.pread(fd, MAX_STATE_BYTES, 0)
            state = _parse(data)
            if state is None:
                log.warning(f"client limits: {path} was corrupt; counting again from nothing")
                state = (0.0, 0, [])
            start, count, pids = change(*state, time.time())
            new = f"{start:.3f} {count} {' '.join(pids)}".rstrip().encode() + b"\n"
            if new != data:
                os.pwrite(fd, new, 0)
                if len(new) < len(data):
                    os.ftruncate(fd, len(new))
            return True
        except OSError as exc:
            if ip:
                log.warning(
                    f"client limits: cannot update {path}: {exc.strerror or exc}; "
                    f"connection from [{ip}] not counted for service {self.service}"
                )
            return False
        finally:
            os.close(fd)  # drops the flock

    def _open_locked(self, path: str) -> int:
        """``path`` opened (made if need be) and locked; never a file the
        sweep unlinked while we waited for the lock."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(10):
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                clients = os.path.dirname(self.dir)
                for directory in (clients, self.dir):  # both 0700, as ROOT/run/authfail
                    if not os.path.isdir(directory):
                        os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(path, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OSError(f"{path} keeps being removed")

    def prune(self) -> None:
        """Remove the files of clients whose window is over and whose
        processes are all gone (a busy file is left for next time)."""
        now = time.time()
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < self.rate_time_unit:
                    continue
                fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                state = _parse(os.pread(fd, MAX_STATE_BYTES, 0))
                if state is None or (
                    _window_over(state[0], now, self.rate_time_unit) and not any(_alive(p) for p in state[2])
                ):
                    os.unlink(entry.path)
            except OSError:
                pass
            finally:
                os.close(fd)


def _window_over(start: float, now: float, unit: float) -> bool:
    """Whether the rate window that began at ``start`` is over: a unit has
    passed, or the clock was set back (a second's leeway: ``start`` is
    written rounded to the millisecond)."""
    return not -1.0 < now - start < unit


def _parse(data: bytes) -> tuple[float, int, list[str]] | None:
    """(window start, window count, ["PID:START", ...]) of a file, None when corrupt."""
    if not data:
        return 0.0, 0, []
    try:
        start, count, *pids = data.decode("ascii").split()
        if all(p.partition(":")[0].isdigit() and p.partition(":")[2].isdigit() for p in pids):
            return float(start), int(count), pids
    except ValueError:  # UnicodeDecodeError too
        pass
    return None


def _start_time(pid: str) -> str:
    """Field 22 of /proc/PID/stat (ticks since boot), "0" where there is none."""
    try:
        return _stat_fields(pid)[19].decode()
    except (OSError, IndexError):
        return "0"


def _stat_fields(pid: str) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).rpartition(b")")[2].split()
    finally:
        os.close(fd)


def _alive(entry: str) -> bool:
    """Whether the process "PID:START" still runs (not a zombie, not a new process with its pid)."""
    pid, _, start = entry.partition(":")
    if not pid.isdigit() or int(pid) <= 1:
        return False
    try:
        fields = _stat_fields(pid)
        if fields[0] in (b"Z", b"X"):
            return False
        return start == "0" or fields[19].decode() == start
    except FileNotFoundError:
        pass  # gone, or hidden (hidepid): ask the kernel
    except (OSError, IndexError):
        pass
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
