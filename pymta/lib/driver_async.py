"""Serve many sessions in one process with asyncio: ``Accept=no`` and ``--listen``.

Each connection gets a fresh protocol object from ``factory()``; the
driver carries out its actions (see ``sansio``).  It is written on
asyncio's callback layer (``asyncio.Protocol``), not on streams: a request
is answered from inside ``data_received`` in one trip round the event loop,
with no task to wake and no timeout object per read -- for a client that
waits for each answer (POP3 RETR after RETR) that round trip is the cost.

Jobs run in a thread pool so a slow fsync or password hash never stalls
other sessions, and parallel fsyncs are what make a disk take thousands of
messages per second.  While a job, a streamed body or a TLS handshake is
under way, reading is paused: the protocol sees no input until it asked
for more.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from pymta.lib import jobslots, log, metrics
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Protocol, Stream, Watch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from pymta.lib.dirwatch import Watcher
    from pymta.lib.tlslog import Budget

STREAM_FLUSH = 256 * 1024  # bytes of a streamed body gathered before a write
# Input that rearms the timeout: a line end, or this many bytes without one
# (a literal or a long DATA block).  A slow-loris client sending a byte at a
# time makes no progress and is cut when the timeout runs out.
PROGRESS_BYTES = 4096
RECEIVE_BUFFER = 64 * 1024  # one read's most; the server's one receive buffer


class _Connection(asyncio.BufferedProtocol):
    """One session.  Input arrives through ``get_buffer``/``buffer_updated``
    into one receive buffer the whole server shares (the loop is one thread
    and each read is copied out before the next): plain ``data_received``
    would have asyncio allocate, shrink and free a 256 KiB bytes object per
    read -- three system calls (mmap, mremap, munmap) for each command line."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        # None until connection_made, which sets them before anything else runs
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.protocol: Protocol = None  # type: ignore[assignment]
        self.info: ConnectionInfo = None  # type: ignore[assignment]
        self.pending: deque = deque()
        self.busy = False  # a job, a stream or a handshake is under way
        self.closed = False
        self.counted = False
        self.ticket = -1  # from the per-client limits: what to release at the end
        self.stream: Iterator[bytes] | None = None
        self.stream_in_thread = False  # its chunks read files: pulled in the job threads
        self.gathering = False  # a job thread is pulling the stream's next chunks
        self.watch: object = None  # a dirwatch token or a _Group while the protocol watches directories
        self.jobs = 0  # Jobs started: a shared look is handed over only if none started since it began
        self.change_pending = False  # a watched directory changed while busy
        self.write_paused = False
        self.read_paused = False
        self.held: list[bytes] = []  # input that arrived while busy
        self.eof = False
        self.eof_done = False
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.progress = True  # the deadline may move: a line, a job, a reply to a timeout...
        self.unproven = 0  # bytes received since the deadline last moved, none of them a line end

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.server.implicit_tls:
            # The handshake is ours (not create_server's ssl=), so that its failure is seen and logged.
            self.busy = True
            self._pause_reading()
            self.server.connections.add(self)
            task = self.loop.create_task(self._implicit_tls())
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        self._begin(transport)

    def _begin(self, transport) -> None:
        """The connection is ready (after the handshake on an implicit-TLS port): start the session."""
        server = self.server
        server.connections.add(self)
        server.sessions += 1
        self.counted = True
        if server.sessions > server.max_sessions:
            if server.busy_reply:
                transport.write(server.busy_reply)
            self._close()
            return
        try:
            self.info = server.connection_info(transport)
            if server.client_limits is not None:
                self.ticket = server.client_limits.admit(self.info.peer_ip)
                if self.ticket is None:  # over this client's limit: no session at all
                    self.ticket = -1
                    transport.write(server.client_busy_reply)
                    self._close()
                    metrics.count_later("pymail_sessions_total", service=self.info.service)
                    return
            self.protocol = server.factory()
            self._act(self.protocol.connection_made(self.info))
            metrics.count_later("pymail_sessions_total", service=self.info.service)
        except Exception as exc:
            self._crash(exc)

    def get_buffer(self, sizehint: int):
        return self.server.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.receive_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.info.bytes_in += len(data)
        if self.info.trace is not None:
            self.info.trace.incoming(data)
        if not self.progress:
            self.unproven += len(data)
            if self.unproven >= PROGRESS_BYTES or b"\n" in data:
                self.progress = True
        if self.busy:
            self.held.append(data)
            self._pause_reading()
            return
        try:
            self._act(self.protocol.data_received(data))
        except Exception as exc:
            self._crash(exc)

    def eof_received(self):
        # Keep the write side open: a client that half-closes after its last
        # command still gets the replies (a commit may be under way).
        self.eof = True
        if self.info is not None and not self.info.end:
            self.info.end = "Connection closed"
        if not self.busy and not self.closed:
            self._deliver_eof()
        # (TLS transports cannot stay half-open; asyncio warns if asked to.)
        return self.transport.get_extra_info("ssl_object") is None

    def _deliver_eof(self) -> None:
        if self.eof_done:
            return
        self.eof_done = True
        try:
            self._act(self.protocol.data_received(b""))
        except Exception as exc:
            self._crash(exc)
        self._close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if exc is not None and self.info is not None and not self.info.end:
            self.info.end = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.server.sessions -= 1
            self.counted = False
        if self.ticket >= 0:
            self.server.client_limits.release(self.ticket)
            self.ticket = -1
        self.server.connections.discard(self)
        if self.watch is not None:
            self.server.unwatch(self)
        if self.protocol is not None:
            try:
                self.protocol.connection_lost()
            except Exception as error:
                log.error(f"session error: {error!r}")
            if self.info is not None and self.info.trace is not None:
                self.info.trace.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stream is not None:
            self._pump()

    # -- carrying out actions ---------------------------------------------------------
    def _act(self, actions) -> None:
        self.pending.extend(actions)
        self._drive()

    def _drive(self) -> None:
        out = bytearray()  # replies are gathered so one send carries them all
        while self.pending and not self.busy and not self.closed:
            action = self.pending.popleft()
            if isinstance(action, (bytes, bytearray)):
                out += action
                continue
            if out:
                self._send(out)
                out = bytearray()
            if isinstance(action, Stream):
                self.busy = True
                self.stream = iter(action.chunks)
                self.stream_in_thread = action.reads_disk
                self._pump()
            elif isinstance(action, Job):
                # Reading is paused only if input arrives meanwhile (data_received):
                # two epoll_ctl calls saved on every job of a client that waits for answers.
                self.busy = True
                self.jobs += 1
                self.server.executor.submit(self._run_job, action)
            elif isinstance(action, Watch):
                ok = self.server.watch(self, action)
                self.pending.extendleft(reversed(self.protocol.watching(ok)))
            elif action is STARTTLS:
                self.busy = True
                self._pause_reading()
                task = self.loop.create_task(self._starttls())
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
            elif action is CLOSE:
                self._close()
                return
        if out and not self.closed:
            self._send(out)
        if not self.busy and not self.closed:
            self._idle()

    def _idle(self) -> None:
        """Waiting for input again: hand over what arrived meanwhile, arm the timeout."""
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            self._act(self.protocol.data_received(data))
            return
        if self.change_pending:
            self.change_pending = False
            self._act(self.protocol.changed())
            return
        if self.eof:
            self._deliver_eof()
            return
        self._resume_reading()
        if self.progress:  # only progress rearms the timeout, not every byte
            self.progress = False
            self.unproven = 0
            self.deadline = self.loop.time() + self.protocol.timeout
        if self.timer is None or self.timer.when() > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)

    def changed(self, result=None) -> None:
        """A directory the protocol watches changed (called by the server's watcher,
        or with ``result`` after its group's shared look)."""
        if self.closed:
            return
        if self.busy:
            self.change_pending = True  # told when the job, stream or handshake is over
            return
        try:
            self._act(self.protocol.changed() if result is None else self.protocol.changed(result))
        except Exception as exc:
            self._crash(exc)

    def _timer_fired(self) -> None:
        # One timer per connection, moved lazily: input does not touch it.
        self.timer = None
        if self.closed or self.busy:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)
            return
        self.progress = True  # the protocol may go on (IDLE polls): its next wait is a new one
        try:
            self._act(self.protocol.timed_out())
        except Exception as exc:
            self._crash(exc)

    def _pump(self) -> None:
        if self.stream_in_thread:
            if self.stream is not None and not self.gathering and not self.write_paused and not self.closed:
                self.gathering = True
                future = self.loop.run_in_executor(self.server.executor, jobslots.run, partial(_gather, self.stream))
                future.add_done_callback(self._gathered)
            return
        buf = bytearray()
        try:
            assert self.stream is not None  # _drive set it
            for chunk in self.stream:
                buf += chunk
                if len(buf) >= STREAM_FLUSH:
                    self._send(buf)
                    buf = bytearray()
                    if self.write_paused or self.closed:
                        return  # resume_writing() comes back here
        except Exception as exc:
            self._crash(exc)
            return
        if buf:
            self._send(buf)
        self.stream = None
        self.busy = False
        self.progress = True
        self._drive()

    def _gathered(self, future) -> None:
        """A thread read the next part of a disk-reading stream (see ``_gather``)."""
        self.gathering = False
        if self.closed:
            return
        try:
            data, more = future.result()
        except Exception as exc:
            self._crash(exc)
            return
        if data:
            self._send(data)
        if more:
            self._pump()  # or resume_writing() does, once the peer has read
            return
        self.stream = None
        self.stream_in_thread = False
        self.busy = False
        self.progress = True
        self._drive()

    def _run_job(self, job: Job) -> None:
        """In a job thread: run it, hand the result to the loop (one wake-up,
        no future), then do what the job left for after the answer."""
        after = jobslots.collect_after()
        try:
            try:
                result, failure = jobslots.run(job.run), None
            except Exception as exc:
                result, failure = None, exc
            try:
                self.loop.call_soon_threadsafe(self._job_done, result, failure)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass
        finally:
            jobslots.run_after(after)

    def _job_done(self, result, failure: Exception | None) -> None:
        if self.closed:
            return
        self.busy = False
        self.progress = True
        try:
            if failure is not None:
                raise failure
            self._act(self.protocol.job_done(result))
        except Exception as exc:
            self._crash(exc)

    async def _handshake(self, peer_ip: str):
        """The TLS handshake on the connection: the new transport, or None (failed, and logged)."""
        try:
            transport = await self.loop.start_tls(
                self.transport,
                self,
                self.server.tls(),
                server_side=True,
                ssl_handshake_timeout=self.server.handshake_timeout,
            )
            if transport is None:  # the client closed during the handshake
                raise ConnectionResetError()
            return transport
        except Exception as exc:  # handshake failure or a certificate that will not load
            self.server.handshake_failed(peer_ip, exc)
            return None

    async def _implicit_tls(self) -> None:
        peer = self.transport.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        transport = await self._handshake(peer_ip[7:] if peer_ip.startswith("::ffff:") else peer_ip)
        if transport is None or self.closed:
            # The raw transport's protocol is asyncio's TLS one now: connection_lost never comes here.
            self.closed = True
            self.server.connections.discard(self)
            self.transport.close()
            if transport is not None:
                transport.close()
            return
        self.transport = transport
        self.read_paused = False  # start_tls resumed reading on the new transport
        self.busy = False
        self._begin(transport)

    async def _starttls(self) -> None:
        # CVE-2011-0411: plaintext pipelined behind STARTTLS is never input.
        self.held.clear()
        transport = await self._handshake(self.info.peer_ip)
        if transport is None or self.closed:
            self._close()
            return
        self.transport = transport
        self.read_paused = False  # start_tls resumed reading on the new transport
        self.server.tls_info(self.info, transport)
        self.busy = False
        self.progress = True
        try:
            self._act(self.protocol.tls_started(self.info))
        except Exception as exc:
            self._crash(exc)

    # -- helpers -----------------------------------------------------------------------
    def _send(self, data) -> None:
        self.info.bytes_out += len(data)
        if self.info.trace is not None:
            self.info.trace.outgoing(data)
        self.transport.write(data)

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            try:
                self.transport.pause_reading()
            except (AttributeError, RuntimeError):
                pass

    def _resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            try:
                self.transport.resume_reading()
            except (AttributeError, RuntimeError):
                pass

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.transport.close()  # sends what is buffered, then closes

    def _crash(self, exc: Exception) -> None:
        # never let one session take the server down, nor a traceback reach the peer
        log.error(f"session error: {exc!r}")
        self._close()


def _gather(stream) -> tuple[bytes, bool]:
    """In a job thread: the stream's next STREAM_FLUSH bytes or so, and whether more follow."""
    buf = bytearray()
    for chunk in stream:
        buf += chunk
        if len(buf) >= STREAM_FLUSH:
            return bytes(buf), True
    return bytes(buf), False


class _Group:
    """The sessions of this process watching the same directories with the
    same shared look (``Watch(look=..., shared=...)``): one inotify
    subscription, and one look (a Job) per burst of changes for all of them."""

    __slots__ = ("key", "look", "members", "token", "running", "again", "stamps")

    def __init__(self, key: tuple, look) -> None:
        self.key = key
        self.look = look
        self.members: dict[_Connection, None] = {}  # in the order they came (a set's would be arbitrary)
        self.token = None
        self.running = False  # the look is under way
        self.again = False  # changes came meanwhile: look again once it is over
        self.stamps: dict[_Connection, int] = {}  # each member's Job count when the look began (idle ones)


class AsyncServer:
    def __init__(
        self,
        factory,
        *,
        service: str = "",
        tls=None,
        implicit_tls: bool = False,
        handshake_timeout: float = 30.0,
        max_sessions: int = 100,
        busy_reply: bytes = b"",
        client_limits=None,
        client_busy_reply: bytes = b"",
        job_threads: int = 32,
        job_slots: int = 0,
    ) -> None:
        jobslots.limit(job_slots)  # at most this many jobs run Python at once (0: no limit)
        self.factory = factory
        self.service = service
        self.tls = tls  # function returning an SSLContext, or None
        self.implicit_tls = implicit_tls
        self.handshake_timeout = handshake_timeout
        self.max_sessions = max_sessions
        self.busy_reply = busy_reply
        self.client_limits = client_limits  # connlimit.ClientLimits, shared with the other workers
        self.client_busy_reply = client_busy_reply
        self.sessions = 0
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.executor = ThreadPoolExecutor(max_workers=job_threads, thread_name_prefix="job")
        self.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER))
        self.watcher: Watcher | None = None  # the process's inotify instance, made at the first Watch
        self.watcher_failed = False
        self.groups: dict[tuple, _Group] = {}  # Watch(look=...) subscriptions by (paths, names, shared)
        self.watch_timer = False
        self.metrics_timer = False  # a flush of loop-side counters is due
        self.tls_log_budget: Budget | None = None  # made at the first failed handshake

    # -- counters ----------------------------------------------------------------------
    METRICS_DELAY = 1.0  # seconds a loop-side counter may wait for a write

    # Counters counted on the loop (sessions, refusals: metrics.count_later) wait in
    # memory: no file is written there.  They go out with the next job's counters
    # (a queued message's) or, at the latest, with a flush job METRICS_DELAY later.

    def _metrics_wake(self, loop) -> None:
        """metrics' hook, from any thread: have the loop plan a flush."""
        try:
            loop.call_soon_threadsafe(self._metrics_waiting)
        except RuntimeError:  # the loop is closed: the end of serve() flushes
            pass

    def _metrics_waiting(self) -> None:
        """On the loop: the first loop-side counter waits; flush it soon."""
        if not self.metrics_timer:
            self.metrics_timer = True
            asyncio.get_running_loop().call_later(self.METRICS_DELAY, self._flush_metrics)

    def _flush_metrics(self) -> None:
        self.metrics_timer = False
        if metrics.pending():
            self.executor.submit(metrics.flush)

    # -- directory watches (IMAP IDLE) -------------------------------------------------
    WATCH_DELAY = 0.05  # seconds a burst of changes is gathered before the sessions look

    def watch(self, conn: _Connection, action: Watch) -> bool:
        """Carry out a Watch for ``conn``: True when its protocol will hear of changes."""
        self.unwatch(conn)
        if not action.paths:
            return False
        if self.watcher is None:
            if self.watcher_failed:
                return False
            from pymta.lib import dirwatch  # noqa: PLC0415 lazy: only sessions that watch pay for ctypes

            self.watcher = dirwatch.watcher()
            if self.watcher is None:
                self.watcher_failed = True
                return False
            asyncio.get_running_loop().add_reader(self.watcher.fd, self._watch_readable)
        if action.look is None:
            conn.watch = self.watcher.subscribe(action.paths, conn.changed, action.names)
            return conn.watch is not None
        key = (action.paths, action.names, action.shared)
        group = self.groups.get(key)
        if group is None:
            group = _Group(key, action.look)
            group.token = self.watcher.subscribe(action.paths, partial(self._group_changed, group), action.names)
            if group.token is None:
                return False
            self.groups[key] = group
        group.members[conn] = None
        conn.watch = group
        return True

    def unwatch(self, conn: _Connection) -> None:
        watch, conn.watch = conn.watch, None
        if watch is None or self.watcher is None:
            return
        if not isinstance(watch, _Group):
            self.watcher.unsubscribe(watch)
            return
        watch.members.pop(conn, None)
        if not watch.members:
            self.watcher.unsubscribe(watch.token)
            if self.groups.get(watch.key) is watch:
                del self.groups[watch.key]

    def _group_changed(self, group: _Group) -> None:
        """A group's directories changed (the watcher's callback, after the burst's delay)."""
        if group.running:
            group.again = True  # the look under way may have read the directories before the change
            return
        group.running = True
        group.again = False
        # A member with a Job under way may read the folder after the look does: it looks itself.
        group.stamps = {conn: conn.jobs for conn in group.members if not conn.busy}
        loop = asyncio.get_running_loop()

        def finished(future) -> None:  # in the job's thread
            try:
                loop.call_soon_threadsafe(self._group_looked, group, future)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

        self.executor.submit(jobslots.run, group.look).add_done_callback(finished)

    def _group_looked(self, group: _Group, future) -> None:
        """The group's look is over: each member computes its updates from it, unless
        a Job of its own ran meanwhile (it may have seen more): that one looks itself."""
        group.running = False
        stamps, group.stamps = group.stamps, {}
        try:
            result = future.result()
        except Exception as exc:  # each member looks for itself
            log.error(f"shared look: {exc!r}")
            result = None
        for conn in list(group.members):
            conn.changed(result if result is not None and stamps.get(conn) == conn.jobs else None)
        if group.again and group.members:
            self._group_changed(group)

    def _watch_readable(self) -> None:
        assert self.watcher is not None  # the reader is added with it
        if self.watcher.read() and not self.watch_timer:
            self.watch_timer = True
            asyncio.get_running_loop().call_later(self.WATCH_DELAY, self._watch_fire)

    def _watch_fire(self) -> None:
        self.watch_timer = False
        if self.watcher is not None:
            self.watcher.fire()

    def connection_info(self, transport) -> ConnectionInfo:
        info = ConnectionInfo(service=self.service)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            info.peer_ip, info.peer_port = peer[0], peer[1]
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            info.local_ip, info.local_port = local[0], local[1]
        if info.peer_ip.startswith("::ffff:"):
            info.peer_ip = info.peer_ip[7:]
        info.tls_available = self.tls is not None and not self.implicit_tls
        self.tls_info(info, transport)
        return info

    @staticmethod
    def tls_info(info: ConnectionInfo, transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            info.tls = True
            info.tls_available = False
            info.tls_version = ssl_object.version() or ""
            cipher = ssl_object.cipher()
            info.tls_cipher = cipher[0] if cipher else ""

    async def serve(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_LoopErrors())
        servers = []
        if self.implicit_tls:
            self.tls()  # a certificate that does not load stops the server now, not each handshake
        for sock in sockets:
            sock.setblocking(False)
            # asyncio calls listen() again: keep the queue long (its default of
            # 100 drops a burst of connections, which then hang unanswered).
            # Implicit TLS: each connection makes its own handshake (_Connection._implicit_tls).
            servers.append(await loop.create_server(lambda: _Connection(self), sock=sock, backlog=socket.SOMAXCONN))
        metrics.defer_with(partial(self._metrics_wake, loop))  # loop-side counters wait in memory
        jobslots.serve_jobs(self.executor.submit)  # jobslots.off_loop hands clean-up to the job threads
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        if hasattr(self.tls, "check"):  # SIGHUP: a renewed certificate; sessions go on
            try:
                loop.add_signal_handler(signal.SIGHUP, self._reload_tls)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        # A second signal is common (systemd signals the whole group, then the
        # parent signals its children); arriving while the loop closes, it
        # would hit the closed self-pipe ("Exception ignored ... Broken pipe").
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        for server in servers:
            server.close()
        for conn in list(self.connections):
            if conn.info is not None and not conn.info.end:
                conn.info.end = "Server shutting down."
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        for _ in range(3):  # connection_lost (a TLS transport's comes one round later): sessions log their end
            await asyncio.sleep(0)
        self.executor.shutdown(wait=False)
        metrics.defer_with(None)
        metrics.flush()  # the loop-side counters not yet written (the loop serves no one now)

    def handshake_failed(self, peer_ip: str, exc: BaseException) -> None:
        """One log line per failed handshake, within the process's budget (a scanner cannot flood the log)."""
        from pymta.lib import tlslog  # noqa: PLC0415 lazy: only on the failure path

        if self.tls_log_budget is None:
            self.tls_log_budget = tlslog.Budget()
        tlslog.handshake_failed(peer_ip, exc, self.handshake_timeout, self.tls_log_budget)

    def _reload_tls(self) -> None:
        """The files are read in a job thread, the live context changed here, between handshakes."""
        loop = asyncio.get_running_loop()
        checked = loop.run_in_executor(self.executor, self.tls.check)
        checked.add_done_callback(lambda done: done.cancelled() or done.exception() or self.tls.apply(done.result()))


class _LoopErrors:
    """asyncio's own errors as one log line each, never a traceback, and at
    most one line a second per kind: out of file descriptors, asyncio
    reports every failed accept() (up to 100 per wake-up) with a traceback."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def __call__(self, loop, context: dict) -> None:
        message = context.get("message") or "event loop error"
        now = time.monotonic()
        if now - self.last.get(message, -1e9) < 1.0:
            return
        self.last[message] = now
        exc = context.get("exception")
        log.error(f"{message}: {exc!r}" if exc is not None else message)


def _raise_fd_limit(max_sessions: int) -> None:
    """Use the hard limit on open files (the soft one is often 1024) and say
    so when even that is too small for max_sessions."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft < 3 * max_sessions + 64:
        log.warning(
            f"open files limit {soft} is low for max_sessions {max_sessions}; "
            f"connections beyond it wait until descriptors are free"
        )


def run(factory, sockets: list[socket.socket], **options) -> None:
    server = AsyncServer(factory, **options)
    _raise_fd_limit(server.max_sessions)
    asyncio.run(server.serve(sockets))
