"""Per-client connection limits shared by the processes of one listening daemon.

Like Postfix's anvil(8): for each client address, how many sessions are
open now (``SECTION.max_sessions_per_client``) and how many connections it
made in the current time unit (``SECTION.connection_rate_per_client`` per
``limits.rate_time_unit`` seconds).  Addresses in ``limits.exempt_networks``
are not counted.

The daemon creates one ``ClientLimits`` before it forks its workers; the
table lives in an anonymous shared mapping, so every worker -- and a worker
forked later to replace a dead one -- sees the same counts.  Layout (one
entry per client address, found by a 64-bit hash of it, open addressing
over a short probe window):

    keys[E]            u64   hash of the address, 0 = never used
    window_start[E]    f64   CLOCK_MONOTONIC start of the rate window
    window_count[E]    u32   connections in that window (refused ones too, as anvil counts them)
    sessions[S][E]     u16   open sessions, one column per worker slot

A worker's open sessions are counted in its own column (its *slot*), so a
worker that dies cannot leave counts behind for good: each slot is claimed
by holding a POSIX record lock on one byte of a memfd, which the kernel
drops when the process dies, and a column whose lock is free is zeroed
(when a new worker claims the slot, and before a client is refused).
Another byte of the same memfd is the table's mutex.  POSIX locks belong to
a process, so forked workers never share them by accident.

Under inetd and ``Accept=yes`` (a process per connection) ``inetdlimit``
keeps the same limits in small files, with the same ``client_key``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import time

from pymta.lib import log

try:  # hashlib's own blake2b, without loading OpenSSL (3 ms of every inetd connection)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover
    from hashlib import blake2b

ENTRIES = 65536  # client addresses tracked at once (a few MB, touched only as used)
PROBES = 8  # entries looked at for one address before the table counts as full
# IPv6 clients are counted by prefix, as Postfix 3.8's smtpd_client_ipv6_prefix_length
# (84): one host usually owns far more than one address.
IPV6_PREFIX = 84
MUTEX = 0  # byte of the lock file guarding the table; byte 1 + s guards slot s


def from_config(cfg, section: str, service: str, processes: int) -> ClientLimits | None:
    """The limits of daemon ``section`` (smtpd, pop3d, imapd), or None when both are off."""
    sessions = cfg[f"{section}.max_sessions_per_client"]
    rate = cfg[f"{section}.connection_rate_per_client"]
    if not sessions and not rate:
        return None
    # A replacement worker takes a dead worker's slot; room for twice as many anyway.
    return ClientLimits(
        service,
        sessions,
        rate,
        cfg["limits.rate_time_unit"],
        cfg["limits.exempt_networks"],
        slots=2 * max(processes, 1) + 2,
    )


def client_key(ip: str, exempt) -> int | None:
    """The 64-bit key ``ip`` is counted under (IPv4: the address, IPv6: its
    /84), or None when it is in one of the networks ``exempt`` (or not an address)."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in exempt):
        return None
    if address.version == 6:
        packed = ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False).network_address.packed
    else:
        packed = address.packed
    return int.from_bytes(blake2b(packed, digest_size=8).digest(), "little") or 1


class ClientLimits:
    def __init__(
        self,
        service: str,
        max_sessions: int,
        rate: int,
        rate_time_unit: float,
        exempt_networks: list[str],
        *,
        slots: int,
        entries: int = ENTRIES,
    ) -> None:
        self.service = service
        self.max_sessions = max_sessions  # 0: no limit
        self.rate = rate  # 0: no limit
        self.rate_time_unit = rate_time_unit
        self.exempt = [ipaddress.ip_network(net, strict=False) for net in exempt_networks]
        self.slots, self.entries = slots, entries
        import mmap  # noqa: PLC0415 lazy: inetdlimit imports this module for client_key

        self.lock_fd = _anonymous_file("pymail-connlimit-lock")
        size = entries * (8 + 8 + 4 + 2 * slots)
        self.map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: shared with the workers forked later
        view = memoryview(self.map)
        at = 0
        self.keys = view[at : at + 8 * entries].cast("Q")
        at += 8 * entries
        self.window_start = view[at : at + 8 * entries].cast("d")
        at += 8 * entries
        self.window_count = view[at : at + 4 * entries].cast("I")
        at += 4 * entries
        self.sessions = view[at : at + 2 * entries * slots].cast("H")
        self.slot: int | None = None  # this process's column, claimed on first use
        self.slot_pid = 0
        self.full_warned = 0.0

    # -- what the driver calls ----------------------------------------------------------
    def admit(self, ip: str) -> int | None:
        """A ticket for ``release`` (-1: nothing counted), or None: refuse this
        connection (the reason is logged, one line)."""
        key = self._key(ip)
        if key is None:
            return -1
        now = time.monotonic()
        with self._locked():
            slot = self._my_slot()
            entry = self._entry(key, now)
            if entry < 0:
                return -1
            if self.rate:
                if now - self.window_start[entry] >= self.rate_time_unit:
                    self.window_start[entry] = now
                    self.window_count[entry] = 0
                count = min(self.window_count[entry] + 1, 0xFFFFFFFF)
                self.window_count[entry] = count
                if count > self.rate:
                    log.warning(f"connection rate limit exceeded: {count} from [{ip}] for service {self.service}")
                    return None
            if self.max_sessions:
                open_now = self._open_sessions(entry)
                if open_now >= self.max_sessions:
                    open_now = self._open_sessions(entry, forget_dead=True)
                if open_now >= self.max_sessions:
                    log.warning(
                        f"connection concurrency limit exceeded: {open_now + 1} from [{ip}] for service {self.service}"
                    )
                    return None
            if slot is None:
                return -1
            cell = slot * self.entries + entry
            if self.sessions[cell] == 0xFFFF:
                return -1
            self.sessions[cell] += 1
            return entry

    def release(self, ticket: int) -> None:
        """A session admitted with ``ticket`` has ended."""
        if ticket < 0 or self.slot is None or self.slot_pid != os.getpid():
            return
        with self._locked():
            cell = self.slot * self.entries + ticket
            if self.sessions[cell]:
                self.sessions[cell] -= 1

    # -- the table ----------------------------------------------------------------------
    def _key(self, ip: str) -> int | None:
        return client_key(ip, self.exempt)

    def _entry(self, key: int, now: float) -> int:
        """The entry of ``key``, taking a free one if it has none; -1 when the
        probe window is full (the connection is then let through uncounted)."""
        start = key % self.entries
        free = -1
        for i in range(PROBES):
            entry = (start + i) % self.entries
            stored = self.keys[entry]
            if stored == key:
                return entry
            if free < 0 and (stored == 0 or self._unused(entry, now)):
                free = entry
        if free < 0:
            if now - self.full_warned > 60:
                self.full_warned = now
                log.warning(
                    f"client limits table full; connections from new addresses are not counted "
                    f"for service {self.service}"
                )
            return -1
        self.keys[free] = key
        self.window_start[free] = now
        self.window_count[free] = 0
        return free

    def _unused(self, entry: int, now: float) -> bool:
        if self.rate and now - self.window_start[entry] < self.rate_time_unit:
            return False
        return self._open_sessions(entry) == 0

    def _open_sessions(self, entry: int, forget_dead: bool = False) -> int:
        total = 0
        for slot in range(self.slots):
            count = self.sessions[slot * self.entries + entry]
            if count and forget_dead and slot != self.slot and self._try_slot(slot):
                self._clear_slot(slot)  # its worker died: its sessions died with it
                fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, 1 + slot)
                count = 0
            total += count
        return total

    # -- slots: one column per live worker ----------------------------------------------
    def _my_slot(self) -> int | None:
        """This process's slot, claimed the first time (a forked child does
        not inherit its parent's lock, so it claims its own)."""
        pid = os.getpid()
        if self.slot_pid == pid:
            return self.slot
        self.slot, self.slot_pid = None, pid
        for slot in range(self.slots):
            if self._try_slot(slot):  # free, or its worker is dead
                self._clear_slot(slot)
                self.slot = slot
                return slot
        log.warning(
            f"client limits: no free slot among {self.slots}; sessions of process {pid} "
            f"are not counted for service {self.service}"
        )
        return None

    def _try_slot(self, slot: int) -> bool:
        try:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + slot)
            return True
        except OSError:
            return False

    def _clear_slot(self, slot: int) -> None:
        self.sessions[slot * self.entries : (slot + 1) * self.entries] = _zeros(self.entries)

    def _locked(self):
        return _Mutex(self.lock_fd)


class _Mutex:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, MUTEX)

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, MUTEX)


_ZEROS: dict[int, memoryview] = {}


def _zeros(count: int) -> memoryview:
    if count not in _ZEROS:
        _ZEROS[count] = memoryview(bytes(2 * count)).cast("H")
    return _ZEROS[count]


def _anonymous_file(name: str) -> int:
    """A descriptor of a file no path leads to, for the record locks."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
    import tempfile  # noqa: PLC0415 lazy

    fh = tempfile.TemporaryFile()
    fd = os.dup(fh.fileno())
    fh.close()
    return fd
