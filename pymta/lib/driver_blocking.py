"""Run one protocol session with blocking I/O: the inetd / ``Accept=yes`` path.

One connection, one process, then exit.  ``tls`` is a function returning
an ``ssl.SSLContext``, called only when a session needs TLS, so sessions
without it never import ``ssl``.  No asyncio and no threads are
imported here: every inetd connection pays for what this path imports.
The connection is a socket (inetd, systemd) or a pair of pipes
(``sendmail -bs`` on stdin/stdout); only a socket can do TLS.
"""

from __future__ import annotations

import _socket  # not socket.py: see pymta.lib.activation
import os
import select
import time
from collections import deque

from pymta.lib import metrics
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Stream, Watch

RECV_SIZE = 65536
STREAM_FLUSH = 256 * 1024  # bytes of a streamed body gathered before a send
# Input that rearms the timeout: a line end, or this many bytes without one.
# A slow-loris client sending a byte at a time is cut when the timeout runs out.
PROGRESS_BYTES = 4096


class _SocketIO:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.error = ""  # why the connection failed ("Connection reset by peer"), for the session's end

    def recv(self, timeout: float) -> bytes | None:
        """Bytes, b"" at end of input, or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            return None
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            return b""

    def send(self, data: bytes) -> bool:
        self.sock.settimeout(300)
        try:
            self.sock.sendall(data)
            return True
        except OSError as exc:
            self.error = exc.strerror or str(exc) or "Connection lost"
            return False

    def close(self) -> None:
        try:
            self.sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _PipeIO:
    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.error = ""

    def recv(self, timeout: float) -> bytes | None:
        try:
            ready, _, _ = select.select([self.rfd], [], [], timeout)
            if not ready:
                return None
            return os.read(self.rfd, RECV_SIZE)
        except OSError:
            return b""

    def send(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.wfd, view) :]
            return True
        except OSError:
            return False

    def close(self) -> None:
        pass


def socket_info(sock: _socket.socket, service: str) -> ConnectionInfo:
    info = ConnectionInfo(service=service)
    try:
        peer = sock.getpeername()
        if isinstance(peer, tuple):
            info.peer_ip, info.peer_port = peer[0], peer[1]
        else:
            info.peer_ip = "unix"
        local = sock.getsockname()
        if isinstance(local, tuple):
            info.local_ip, info.local_port = local[0], local[1]
    except OSError:
        pass
    if info.peer_ip.startswith("::ffff:"):
        info.peer_ip = info.peer_ip[7:]
    return info


def _tls_info(info: ConnectionInfo, tls_sock) -> None:
    info.tls = True
    info.tls_version = tls_sock.version() or ""
    cipher = tls_sock.cipher()
    info.tls_cipher = cipher[0] if cipher else ""


def _handshake_failed(info: ConnectionInfo, exc: Exception, timeout: float) -> None:
    from pymta.lib import tlslog  # noqa: PLC0415 lazy: only on the failure path

    tlslog.handshake_failed(info.peer_ip, exc, timeout)


def serve_socket(
    sock: _socket.socket,
    protocol,
    *,
    service: str = "",
    tls=None,
    implicit_tls: bool = False,
    handshake_timeout: float = 30.0,
) -> None:
    info = socket_info(sock, service)
    info.tls_available = tls is not None and not implicit_tls
    if implicit_tls:
        sock.settimeout(handshake_timeout)
        try:
            sock = tls().wrap_socket(sock, server_side=True)
        except Exception as exc:  # handshake failure, or a certificate that will not load (logged by the loader)
            _handshake_failed(info, exc, handshake_timeout)
            sock.close()
            return
        _tls_info(info, sock)
    _run(_SocketIO(sock), protocol, info, tls, handshake_timeout)


def serve_pipes(protocol, *, rfd: int = 0, wfd: int = 1, service: str = "local") -> None:
    info = ConnectionInfo(peer_ip="local", service=service)
    _run(_PipeIO(rfd, wfd), protocol, info, None, 0)


def _run(io, protocol, info: ConnectionInfo, tls, handshake_timeout: float) -> None:
    metrics.count("pymail_sessions_total", service=info.service)

    def send(data: bytes) -> bool:
        info.bytes_out += len(data)
        if info.trace is not None:
            info.trace.outgoing(data)
        if io.send(data):
            return True
        info.end = info.end or io.error
        return False

    pending = deque(protocol.connection_made(info))
    out: list[bytes | bytearray] = []
    eof = False
    deadline = 0.0
    progress = True  # the deadline may move (a line arrived, work was done, a timeout answered)
    unproven = 0  # bytes since the deadline last moved, none of them a line end
    try:
        while True:
            while pending:
                action = pending.popleft()
                if isinstance(action, (bytes, bytearray)):
                    out.append(action)
                    continue
                if isinstance(action, Stream):
                    size = sum(map(len, out))
                    for chunk in action.chunks:  # gathered: one send per ~256 KiB
                        out.append(chunk)
                        size += len(chunk)
                        if size >= STREAM_FLUSH:
                            if not send(b"".join(out)):
                                return
                            out.clear()
                            size = 0
                    continue
                if out and not send(b"".join(out)):
                    return
                out.clear()
                if isinstance(action, Job):
                    pending.extend(protocol.job_done(action.run()))
                    progress = True
                elif isinstance(action, Watch):
                    # one session per process: polling costs no more than a watch would
                    pending.extendleft(reversed(protocol.watching(False)))
                elif action is STARTTLS:
                    if tls is None or not isinstance(io, _SocketIO):
                        return
                    sock = io.sock
                    sock.settimeout(handshake_timeout)
                    try:
                        # Anything the client sent after STARTTLS is still in the
                        # kernel: the handshake reads it as TLS and fails.
                        tls_sock = tls().wrap_socket(sock, server_side=True)
                    except Exception as exc:  # handshake failure or unloadable certificate
                        _handshake_failed(info, exc, handshake_timeout)
                        return
                    io = _SocketIO(tls_sock)
                    _tls_info(info, tls_sock)
                    info.tls_available = False
                    pending.extend(protocol.tls_started(info))
                    progress = True
                elif action is CLOSE:
                    return
            if out:
                if not send(b"".join(out)):
                    return
                out.clear()
            if eof:
                return
            if progress:  # only progress rearms the timeout, not every byte
                progress, unproven = False, 0
                deadline = time.monotonic() + protocol.timeout
            left = deadline - time.monotonic()
            data = io.recv(left) if left > 0 else None
            if data is None:
                progress = True  # the protocol may go on (IDLE polls): its next wait is a new one
                pending.extend(protocol.timed_out())
                continue
            info.bytes_in += len(data)
            if info.trace is not None:
                info.trace.incoming(data)
            if not data:
                eof = True
                info.end = info.end or io.error or "Connection closed"
            elif not progress:
                unproven += len(data)
                progress = unproven >= PROGRESS_BYTES or b"\n" in data
            pending.extend(protocol.data_received(data))
    finally:
        protocol.connection_lost()
        if info.trace is not None:
            info.trace.close()
        io.close()
