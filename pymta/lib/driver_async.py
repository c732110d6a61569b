"""Serve many sessions in one process with asyncio: ``Accept=no`` and ``--listen``.

Each connection gets a fresh protocol object from ``factory()``; the
driver carries out its actions (see ``sansio``).  Jobs run in a thread pool
so a slow fsync or password hash never stalls other sessions, and parallel
fsyncs are what make a disk take thousands of messages per second.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from pymta.lib import log
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Stream

RECV_SIZE = 65536
STREAM_FLUSH = 256 * 1024  # bytes of a streamed body gathered before a write


class AsyncServer:
    def __init__(self, factory, *, service: str = "", tls=None, implicit_tls: bool = False,
                 handshake_timeout: float = 30.0, max_sessions: int = 100, busy_reply: bytes = b"",
                 job_threads: int = 32) -> None:
        self.factory = factory
        self.service = service
        self.tls = tls  # function returning an SSLContext, or None
        self.implicit_tls = implicit_tls
        self.handshake_timeout = handshake_timeout
        self.max_sessions = max_sessions
        self.busy_reply = busy_reply
        self.sessions = 0
        self.executor = ThreadPoolExecutor(max_workers=job_threads, thread_name_prefix="job")
        self._tasks: set[asyncio.Task] = set()

    def _info(self, writer: asyncio.StreamWriter) -> ConnectionInfo:
        info = ConnectionInfo(service=self.service)
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple):
            info.peer_ip, info.peer_port = peer[0], peer[1]
        local = writer.get_extra_info("sockname")
        if isinstance(local, tuple):
            info.local_ip, info.local_port = local[0], local[1]
        if info.peer_ip.startswith("::ffff:"):
            info.peer_ip = info.peer_ip[7:]
        info.tls_available = self.tls is not None and not self.implicit_tls
        self._tls_info(info, writer)
        return info

    @staticmethod
    def _tls_info(info: ConnectionInfo, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            info.tls = True
            info.tls_available = False
            info.tls_version = ssl_object.version() or ""
            cipher = ssl_object.cipher()
            info.tls_cipher = cipher[0] if cipher else ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.sessions += 1
        try:
            if self.sessions > self.max_sessions:
                if self.busy_reply:
                    writer.write(self.busy_reply)
                    await writer.drain()
                return
            await self._session(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # never let one session take the server down
            log.error(f"session error: {exc!r}")
        finally:
            self.sessions -= 1
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        protocol = self.factory()
        info = self._info(writer)
        pending = deque(protocol.connection_made(info))
        eof = False
        try:
            while True:
                out = bytearray()  # replies are gathered so one send carries them all
                while pending:
                    action = pending.popleft()
                    if isinstance(action, (bytes, bytearray)):
                        out += action
                        continue
                    if isinstance(action, Stream):
                        for chunk in action.chunks:
                            out += chunk
                            if len(out) >= STREAM_FLUSH:
                                writer.write(out)
                                out = bytearray()
                                await writer.drain()
                        continue
                    if out:
                        writer.write(out)
                        out = bytearray()
                    if isinstance(action, Job):
                        await writer.drain()
                        result = await loop.run_in_executor(self.executor, action.run)
                        pending.extend(protocol.job_done(result))
                    elif action is STARTTLS:
                        if self.tls is None:
                            return
                        transport = writer.transport
                        transport.pause_reading()
                        await writer.drain()
                        # CVE-2011-0411: plaintext pipelined behind STARTTLS that
                        # asyncio already read must never count as encrypted input.
                        buffered = getattr(reader, "_buffer", None)
                        if buffered:
                            buffered.clear()
                        try:
                            await writer.start_tls(self.tls(), ssl_handshake_timeout=self.handshake_timeout)
                        except Exception:  # handshake failure or unloadable certificate
                            return
                        self._tls_info(info, writer)
                        pending.extend(protocol.tls_started(info))
                    elif action is CLOSE:
                        await writer.drain()
                        return
                if out:
                    writer.write(out)
                await writer.drain()
                if eof:
                    return
                try:
                    # asyncio.timeout() costs a timer, wait_for() a whole task per read.
                    async with asyncio.timeout(protocol.timeout):
                        data = await reader.read(RECV_SIZE)
                except (asyncio.TimeoutError, TimeoutError):
                    pending.extend(protocol.timed_out())
                    continue
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    eof = True
                pending.extend(protocol.data_received(data))
        finally:
            protocol.connection_lost()

    async def serve(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for sock in sockets:
            sock.setblocking(False)
            ssl = self.tls() if self.implicit_tls else None
            servers.append(await asyncio.start_server(
                self.handle, sock=sock, ssl=ssl, limit=RECV_SIZE * 2,
                ssl_handshake_timeout=self.handshake_timeout if ssl else None))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=False)


def run(factory, sockets: list[socket.socket], **options) -> None:
    server = AsyncServer(factory, **options)
    asyncio.run(server.serve(sockets))
