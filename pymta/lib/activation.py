"""Sockets handed over by systemd or inetd.

* ``listen_fds()`` -- the sd_listen_fds(3) protocol used by ``Accept=no``
  socket units: ``LISTEN_PID`` must be our pid, ``LISTEN_FDS`` counts the
  listening sockets starting at fd 3.
* ``inetd_socket()`` -- inetd and ``Accept=yes`` units put one connected
  socket on fd 0 and 1.
"""

from __future__ import annotations

import os
import socket
import stat

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


def inetd_socket() -> socket.socket | None:
    """The connection on fd 0 when it is a socket, else None (a pipe or tty)."""
    if not fd_is_socket(0):
        return None
    return socket.socket(fileno=os.dup(0))


def open_listener(host: str, port: int, backlog: int = 511) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock
