"""The contract between a sans-I/O protocol machine and the drivers that run it.

A protocol (SMTP, POP3, IMAP) never touches a socket.  The driver feeds it
bytes and carries out the *actions* it returns, in order:

* ``bytes``        -- send these bytes to the peer.
* ``Stream(it)``   -- send every chunk the iterable yields (large bodies are
                      produced lazily so a 50 MB message never sits in memory).
                      ``Stream(it, reads_disk=True)``: the iterable reads a
                      file; the asyncio driver pulls its chunks in a thread.
* ``Job(fn, *a)``  -- slow work (fsync, password hashing).  The blocking
                      driver calls ``fn(*a)`` directly; the asyncio driver runs
                      it in a thread.  The result goes back through
                      ``protocol.job_done(result)``, which returns more actions.
                      While a job is outstanding the driver does not call
                      ``data_received``: the protocol keeps any input it has
                      already buffered and resumes it in ``job_done``.
* ``Watch(paths)`` -- call ``protocol.changed()`` when one of these
                      directories changes (``Watch(())``: stop).  The driver
                      answers at once through ``protocol.watching(ok)``: False
                      when it cannot watch (the inetd driver never does; no
                      inotify, or out of watches), and the protocol polls.
                      ``names``: in the first directory only entries moved in
                      under these names count.  ``changed()`` comes only
                      while no job is outstanding.
                      ``Watch(paths, names, look=fn, shared=key)``: the
                      sessions of one process watching the same paths with
                      the same ``key`` are told together: after a burst of
                      changes the asyncio driver runs ``fn()`` once in a Job
                      for all of them, then calls ``changed(result)`` of each
                      session that ran no Job since ``fn`` started (that one
                      look is newer than anything the session saw); the
                      others get ``changed()``.  ``fn`` is the first
                      session's; the protocol keeps ``changed(result)`` free
                      of I/O.
* ``STARTTLS``     -- flush, then run the TLS handshake; plaintext the client
                      pipelined behind the command is thrown away (the
                      protocol drops its own buffer, the driver drops its
                      own), then ``protocol.tls_started(info)`` is called.
* ``CLOSE``        -- flush and close the connection.

``protocol.timeout`` is the number of seconds the driver waits for the next
input in the current phase; when it expires the driver calls
``protocol.timed_out()``.  Every protocol method returns a list of actions.

What the driver tells the protocol of the connection it keeps in the
``ConnectionInfo`` the protocol was given (the same object all along):
``bytes_in``/``bytes_out`` count the session's bytes as the protocol sees
them (inside TLS) as they pass, and ``end`` says how the connection ended
when the driver saw it end ("Connection closed", "Connection reset by
peer", "Server shutting down.") before it calls
``protocol.connection_lost()``, where a protocol logs the end of its
session (``disconnected`` words it as Dovecot does).
"""

from __future__ import annotations

from pymta.lib.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STARTTLS = _Marker("STARTTLS")
CLOSE = _Marker("CLOSE")


class Job:
    __slots__ = ("fn", "args")

    def __init__(self, fn, *args) -> None:
        self.fn = fn
        self.args = args

    def run(self):
        return self.fn(*self.args)

    def __repr__(self) -> str:
        return f"Job({getattr(self.fn, '__name__', self.fn)!r})"


def catching(fn, *args):
    """For a Job whose failure the session must answer itself (say the users
    file is unreadable at login), not the driver: fn's result, or the exception."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


class Watch:
    __slots__ = ("paths", "names", "look", "shared")

    def __init__(self, paths=(), names: frozenset[str] | None = None, look=None, shared=None) -> None:
        self.paths = tuple(paths)
        self.names = names
        self.look = look  # run once per burst for the sessions sharing the key (or None: each looks itself)
        self.shared = shared


class Stream:
    __slots__ = ("chunks", "reads_disk")

    def __init__(self, chunks, reads_disk: bool = False) -> None:
        self.chunks = chunks
        self.reads_disk = reads_disk


class ConnectionInfo(Record):
    """What a protocol may know about its connection (never the socket)."""

    __slots__ = (
        "peer_ip",
        "peer_port",
        "local_ip",
        "local_port",
        "service",
        "tls",
        "tls_version",
        "tls_cipher",
        "tls_available",
        "extra",
        "bytes_in",
        "bytes_out",
        "end",
        "trace",
    )
    peer_ip: str
    peer_port: int
    local_ip: str
    local_port: int
    service: str
    tls: bool
    tls_version: str
    tls_cipher: str
    tls_available: bool
    extra: dict[str, Any]
    bytes_in: int
    bytes_out: int
    end: str
    trace: Any
    FIELDS = (
        ("peer_ip", "unknown"),
        ("peer_port", 0),
        ("local_ip", ""),
        ("local_port", 0),
        ("service", ""),  # listener name: "smtp", "submission", "smtps", ...
        ("tls", False),
        ("tls_version", ""),
        ("tls_cipher", ""),
        ("tls_available", False),  # the driver can do STARTTLS
        ("extra", {}),
        ("bytes_in", 0),  # bytes received, counted by the driver (inside TLS)
        ("bytes_out", 0),  # bytes sent, counted by the driver
        ("end", ""),  # how the driver saw the connection end; "" while it lasts
        # set by the protocol (a rawlog.RawLog): the driver hands it every byte in
        # and out (incoming/outgoing) and closes it after connection_lost
        ("trace", None),
    )

    @property
    def is_loopback(self) -> bool:
        return self.peer_ip.startswith("127.") or self.peer_ip in ("::1", "unix", "local")


def disconnected(info: ConnectionInfo, reason: str = "") -> str:
    """The end of a session in Dovecot's words: ``Disconnected: REASON in=N out=N``,
    the protocol's own reason ("Logged out", ...) first, else the driver's."""
    return f"Disconnected: {reason or info.end or 'Connection closed'} in={info.bytes_in} out={info.bytes_out}"


class Protocol:
    """Base class: the defaults a protocol machine may keep."""

    timeout: float = 300.0

    def connection_made(self, info: ConnectionInfo) -> list:
        return []

    def data_received(self, data: bytes) -> list:  # b"" means end of input
        raise NotImplementedError

    def job_done(self, result) -> list:
        return []

    def tls_started(self, info: ConnectionInfo) -> list:
        return []

    def timed_out(self) -> list:
        return [CLOSE]

    def watching(self, ok: bool) -> list:
        """The answer to a ``Watch``: True if ``changed()`` will come."""
        return []

    def changed(self, result=None) -> list:
        """A watched directory changed; ``result``: what the shared look found (see ``Watch``), or None."""
        return []

    def connection_lost(self) -> None:
        """The peer went away (or the driver gave up); release resources."""
