"""The per-client limits of inetd mode: the state files under ROOT/run/clients/
with several processes, dead and reused pids, corrupt files, a full disk, the
sweep, and what a connection pays (tests/test_conn_limits.py drives it through
real daemons under systemd-socket-activate --inetd)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pymta.lib import inetdlimit
from pymta.lib.connlimit import client_key
from test_faults import small_disk  # noqa: F401 (a fixture)


def limits(root, sessions: int = 2, rate: int = 0, unit: float = 60.0, exempt=()) -> inetdlimit.InetdLimits:
    return inetdlimit.InetdLimits(str(root / "run" / "clients" / "smtp"), "smtp", sessions, rate, unit, list(exempt))


def state_file(root, ip: str):
    return root / "run" / "clients" / "smtp" / f"{client_key(ip, []):016x}"


class Held:
    """A process that took its place with ``admit`` and holds it until ``end``."""

    def __init__(self, lim: inetdlimit.InetdLimits, ip: str) -> None:
        answer_r, answer_w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover (the child)
            try:
                os.close(answer_r)
                os.close(self.go_w)
                os.write(answer_w, b"1" if lim.admit(ip) else b"0")
                os.read(self.go_r, 1)
                lim.release()
            finally:
                os._exit(0)
        os.close(answer_w)
        os.close(self.go_r)
        self.admitted = os.read(answer_r, 1) == b"1"
        os.close(answer_r)

    def end(self) -> None:
        os.write(self.go_w, b"x")  # a byte, not EOF: later children hold copies of this pipe
        os.close(self.go_w)
        os.waitpid(self.pid, 0)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.go_w)


@pytest.fixture(autouse=True)
def no_sweep(monkeypatch):
    monkeypatch.setattr(inetdlimit, "PRUNE_ONE_IN", 10**9)


def test_sessions_held_by_other_processes_count_and_end(tmp_path):
    lim = limits(tmp_path, sessions=2)
    held = [Held(lim, "192.0.2.7") for _ in range(2)]
    assert [h.admitted for h in held] == [True, True]
    third = Held(lim, "192.0.2.7")
    assert not third.admitted
    third.end()
    other = Held(lim, "192.0.2.8")  # another address, its own count
    assert other.admitted
    held.pop().end()  # a session ends: its place is free
    again = Held(lim, "192.0.2.7")
    assert again.admitted
    for h in held + [other, again]:
        h.end()
    assert state_file(tmp_path, "192.0.2.7").read_text().split()[2:] == []


def test_ipv6_counts_per_84_prefix(tmp_path):
    lim = limits(tmp_path, sessions=1)
    first = Held(lim, "2001:db8::1")
    same_prefix = Held(lim, "2001:db8::fff:1")  # inside the same /84
    other_prefix = Held(lim, "2001:db8:0:0:1::1")
    assert (first.admitted, same_prefix.admitted, other_prefix.admitted) == (True, False, True)
    for h in (first, same_prefix, other_prefix):
        h.end()


def test_a_killed_process_and_a_reused_pid_do_not_count(tmp_path):
    lim = limits(tmp_path, sessions=2)
    killed = Held(lim, "192.0.2.7")
    killed.kill()  # never released
    path = state_file(tmp_path, "192.0.2.7")
    # and a pid that runs, but is not the process that was counted (other start time)
    start, count, pids = path.read_text().split()[0], 0, path.read_text().split()[2:]
    path.write_text(f"{start} {count} {' '.join(pids)} {os.getpid()}:1\n")
    held = [Held(lim, "192.0.2.7") for _ in range(2)]
    assert [h.admitted for h in held] == [True, True]
    for h in held:
        h.end()


def test_rate_counts_refused_connections_and_starts_again(tmp_path, capsys):
    lim = limits(tmp_path, sessions=0, rate=2, unit=0.5)
    assert [lim.admit("192.0.2.7") for _ in range(4)] == [True, True, False, False]
    assert state_file(tmp_path, "192.0.2.7").read_text().split()[1] == "4"
    assert "connection rate limit exceeded: 3 from [192.0.2.7] for service smtp" in capsys.readouterr().err
    time.sleep(0.55)
    assert lim.admit("192.0.2.7")
    # a window that starts in the future (clock set back) starts again now
    path = state_file(tmp_path, "192.0.2.7")
    path.write_text(f"{time.time() + 3600:.3f} 9\n")
    assert lim.admit("192.0.2.7")


def test_exempt_addresses_make_no_file(tmp_path):
    lim = limits(tmp_path, sessions=1, rate=1, exempt=["127.0.0.0/8", "::1"])
    assert all(lim.admit(ip) for ip in ["127.0.0.1", "127.0.0.1", "::1", "::ffff:127.0.0.2", "unix"])
    assert not (tmp_path / "run").exists()


def test_a_corrupt_file_counts_as_empty_and_is_rewritten(tmp_path, capsys):
    lim = limits(tmp_path, sessions=1, rate=5)
    path = state_file(tmp_path, "192.0.2.7")
    path.parent.mkdir(parents=True)
    for junk in (b"\xff\xfe garbage", b"1 2 3 4 5", b"x" * 100_000, b"nan"):
        path.write_bytes(junk)
        assert lim.admit("192.0.2.7")
        lim.release()
        assert path.read_text().count(" ") == 1, junk  # "START COUNT"
    assert "was corrupt" in capsys.readouterr().err


def test_a_file_that_cannot_be_made_lets_the_client_through_logged_once(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "clients").write_text("not a directory\n")
    lim = limits(tmp_path, sessions=1, rate=1)
    assert lim.admit("192.0.2.7")
    lim.release()
    assert lim.admit("192.0.2.7")
    err = capsys.readouterr().err
    assert err.count("not counted for service smtp") == 2, err  # one line per connection, none at release


def test_full_disk_keeps_counting_in_existing_files(small_disk, capsys):  # noqa: F811
    lim = limits(small_disk.path, sessions=0, rate=2)
    assert lim.admit("192.0.2.7")
    small_disk.fill()
    assert lim.admit("192.0.2.7")  # rewritten in place, same length or shorter: still counts
    assert not lim.admit("192.0.2.7")
    assert lim.admit("192.0.2.8")  # a file that cannot be written: let through
    small_disk.free()


def test_the_sweep_removes_stale_files_only(tmp_path, monkeypatch):
    lim = limits(tmp_path, sessions=5, rate=5, unit=0.3)
    live = Held(lim, "192.0.2.1")
    killed = Held(lim, "192.0.2.2")
    killed.kill()
    for i in range(3, 8):
        assert lim.admit(f"192.0.2.{i}")
        lim.release()
    time.sleep(0.35)
    fresh = Held(lim, "192.0.2.9")
    old = time.time() - 10
    for path in (tmp_path / "run" / "clients" / "smtp").iterdir():
        if path.name != f"{client_key('192.0.2.9', []):016x}":
            os.utime(path, (old, old))
    monkeypatch.setattr(inetdlimit, "PRUNE_ONE_IN", 1)
    assert lim.admit("192.0.2.10")
    lim.release()  # the sweep
    left = {p.name for p in (tmp_path / "run" / "clients" / "smtp").iterdir()}
    assert left == {f"{client_key(ip, []):016x}" for ip in ("192.0.2.1", "192.0.2.9", "192.0.2.10")}
    live.end()
    fresh.end()


def test_what_a_connection_pays(tmp_path):
    """admit and release of one session, the whole counting of an inetd
    connection (imports aside: tests/test_startup.py): well under 1 ms."""
    lim = limits(tmp_path, sessions=50, rate=10**6)
    lim.admit("192.0.2.7")
    lim.release()
    best = float("inf")
    for _ in range(200):
        began = time.perf_counter()
        lim.admit("192.0.2.7")
        lim.release()
        best = min(best, time.perf_counter() - began)
    assert best < 0.001, best
