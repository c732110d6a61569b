"""pymta.lib.driver_async: sessions watching the same directories with a shared
look are told together -- one look (a Job) per burst, its result handed to
each session that ran no Job since it began; the others look themselves."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from pymta.lib import driver_async, jobslots
from pymta.lib.sansio import Job, Protocol, Watch


class Watcher(Protocol):
    """A session that watches ``paths`` from the start, and on b"job" runs a Job."""

    timeout = 60.0

    def __init__(self, paths, look, shared, told: list) -> None:
        self.paths, self.look, self.shared, self.told = paths, look, shared, told

    def connection_made(self, info) -> list:
        return [Watch(self.paths, look=self.look, shared=self.shared)]

    def watching(self, ok: bool) -> list:
        return [b"watching\n"] if ok else [b"polling\n"]

    def data_received(self, data: bytes) -> list:
        if data in (b"job\n", b"slow job\n"):
            return [Job(time.sleep, 0.4 if data == b"slow job\n" else 0)]
        return []

    def job_done(self, result) -> list:
        return [b"job done\n"]

    def changed(self, result=None) -> list:
        self.told.append((self, result))
        return [b"changed %s\n" % str(result).encode()]


def _serve(tmp_path, make):
    """A server on a thread's own event loop; returns (port, loop, stop)."""
    ready = threading.Event()
    box: dict = {}

    def main() -> None:
        async def serve() -> None:
            server = driver_async.AsyncServer(make, job_threads=4)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            sock.setblocking(False)
            box["port"] = sock.getsockname()[1]
            box["stop"] = stop = asyncio.Event()
            box["server"] = server
            srv = await asyncio.get_running_loop().create_server(lambda: driver_async._Connection(server), sock=sock)
            ready.set()
            await stop.wait()
            srv.close()

        box["loop"] = loop = asyncio.new_event_loop()
        loop.run_until_complete(serve())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)

    return box["port"], box["server"], stop


def _line(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            raise AssertionError(f"closed: {buf!r}")
        buf += data
    return buf


def _quiet(sock: socket.socket, wait: float = 0.4) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return True


def test_one_look_per_burst_for_the_sessions_of_a_group(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    looks = {"one": 0, "two": 0}
    slow = threading.Event()

    def look(name: str):
        looks[name] += 1
        if slow.is_set():
            time.sleep(0.5)
        return f"{name}-{looks[name]}"

    told: list = []
    order = iter([("one", one)] * 4 + [("two", two)] * 2)

    def make():
        name, path = next(order)
        return Watcher([str(path)], lambda: look(name), "key", told)

    port, server, stop = _serve(tmp_path, make)
    socks = []
    try:
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", port))
            assert _line(s) == b"watching\n"
            socks.append(s)
        ones, twos = socks[:4], socks[4:]
        assert len(server.groups) == 2 and server.watcher is not None and len(server.watcher.wds) == 2
        # a burst of changes in one/: one look, every session of the group told its result
        for i in range(5):
            (one / f"f{i}").write_bytes(b"x")
        for s in ones:
            assert _line(s) == b"changed one-1\n"
        assert looks == {"one": 1, "two": 0}
        assert all(_quiet(s, 0.1) for s in twos)  # the other directory's sessions are not told
        # a session that ran a Job since the look began looks itself (changed() without a result)
        slow.set()
        (one / "g").write_bytes(b"x")
        time.sleep(0.2)  # the look is under way (0.05 s delay, then 0.5 s)
        ones[0].sendall(b"job\n")
        assert _line(ones[0]) == b"job done\n"
        # and a change made while the look runs brings another look once it is over
        (one / "h").write_bytes(b"x")
        assert _line(ones[0]) == b"changed None\n"
        for s in ones[1:]:
            assert _line(s) == b"changed one-2\n"
        slow.clear()
        for s in ones:
            assert _line(s) == b"changed one-3\n"
        assert looks == {"one": 3, "two": 0}
        # so does one whose Job was under way when the look began (it may read the folder
        # later), though the Job is over (0.4 s) before the look (0.05 + 0.5 s)
        slow.set()
        ones[1].sendall(b"slow job\n")
        time.sleep(0.1)
        (one / "i").write_bytes(b"x")
        assert _line(ones[1]) == b"job done\n"
        assert _line(ones[1]) == b"changed None\n"
        for s in ones[:1] + ones[2:]:
            assert _line(s) == b"changed one-4\n"
        slow.clear()
        # sessions leaving: the last one takes the subscription with it
        for s in ones:
            s.close()
        deadline = time.monotonic() + 5
        while len(server.groups) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(server.groups) == [((str(two),), None, "key")] and len(server.watcher.wds) == 1
        (two / "f").write_bytes(b"x")
        for s in twos:
            assert _line(s) == b"changed two-1\n"
    finally:
        for s in socks:
            s.close()
        stop()


class Replier(Protocol):
    """On b"job": a Job that leaves work for after the answer; that work
    waits until the loop has taken the Job's result (job_done)."""

    timeout = 60.0

    def __init__(self, handed: threading.Event, seen: list) -> None:
        self.handed, self.seen = handed, seen

    def connection_made(self, info) -> list:
        return [b"hello\n"]

    def data_received(self, data: bytes) -> list:
        def job():
            jobslots.after_reply(lambda: self.seen.append(self.handed.wait(5)))
            return "result"

        return [Job(job)] if data == b"job\n" else []

    def job_done(self, result) -> list:
        self.handed.set()
        return [result.encode() + b"\n"]


def test_a_jobs_after_reply_work_runs_once_the_answer_is_handed_over(tmp_path):
    handed, seen = threading.Event(), []
    port, server, stop = _serve(tmp_path, lambda: Replier(handed, seen))
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            assert _line(s) == b"hello\n"
            started = time.monotonic()
            s.sendall(b"job\n")
            assert _line(s) == b"result\n"
            assert time.monotonic() - started < 2  # not held back by the after-reply work's wait
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [True]  # it ran, and after the hand-over
    finally:
        stop()
