"""Sockets handed over by systemd or inetd.

* ``listen_fds()`` -- the sd_listen_fds(3) protocol used by ``Accept=no``
  socket units: ``LISTEN_PID`` must be our pid, ``LISTEN_FDS`` counts the
  listening sockets starting at fd 3.
* ``inetd_socket()`` -- inetd and ``Accept=yes`` units put one connected
  socket on fd 0 and 1.
"""

from __future__ import annotations

# The inetd path needs only the C module: socket.py (its enums, selectors,
# array) would cost every inetd connection ~2.5 ms.  _socket.socket has what
# the blocking driver calls, and ssl wraps it as it wraps socket.socket.
import _socket
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

SD_LISTEN_FDS_START = 3


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    if unset_environment:
        # Children (pipes run by rules, say) must not think the fds are theirs.
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    import socket  # noqa: PLC0415 lazy (see the import of _socket)

    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks


def fd_is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def inetd_socket() -> _socket.socket | None:
    """The connection on fd 0 when it is a socket, else None (a pipe or tty)."""
    if not fd_is_socket(0):
        return None
    return _socket.socket(fileno=os.dup(0))


def open_listener(host: str, port: int, backlog: int = 511) -> socket.socket:
    import socket  # noqa: PLC0415 lazy (see the import of _socket)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def open_unix_listener(path: str, mode: int = 0o666, backlog: int = 511) -> socket.socket:
    """A stream socket listening at ``path`` with ``mode``; a socket left
    there by an earlier run is replaced, anything else at ``path`` is an error."""
    import socket  # noqa: PLC0415 lazy (see the import of _socket)

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # never reachable by others before the chmod
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
