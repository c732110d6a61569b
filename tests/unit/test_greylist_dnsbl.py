"""The greylist store (pymta.greylist) and the DNSBL site syntax (pymta.dnsbl),
without a daemon; tests/test_smtpd_policy.py runs both behind a real smtpd."""

from __future__ import annotations

import multiprocessing

import pytest

from pymta.dnsbl import matches, parse_site, query_name
from pymta.greylist import PRUNE_EVERY, Greylist, client_network


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def greylist(tmp_path, clock, **kw) -> Greylist:
    settings = dict(delay=300.0, retry_window=4 * 3600.0, max_age=35 * 86400.0, auto_allowlist=1)
    settings.update(kw)
    return Greylist(tmp_path / "run" / "greylist.sqlite", clock=clock, **settings)


def test_new_triplet_waits_the_delay_then_passes(tmp_path):
    clock = Clock()
    g = greylist(tmp_path, clock, auto_allowlist=0)
    assert g.check("192.0.2.10", "a@x.test", "bob@y.test") == (False, "new")
    clock.now += 299
    assert g.check("192.0.2.10", "a@x.test", "bob@y.test") == (False, "early")
    clock.now += 2
    assert g.check("192.0.2.10", "a@x.test", "bob@y.test") == (True, "retry")
    assert g.check("192.0.2.10", "A@X.test", "Bob@y.test") == (True, "known")  # addresses compare without case
    assert g.check("192.0.2.10", "a@x.test", "carol@y.test") == (False, "new")


def test_the_client_network_is_the_unit(tmp_path):
    clock = Clock()
    g = greylist(tmp_path, clock, auto_allowlist=0)
    g.check("192.0.2.10", "a@x.test", "bob@y.test")
    clock.now += 400
    assert g.check("192.0.2.200", "a@x.test", "bob@y.test") == (True, "retry")  # same /24, another pool address
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"


def test_a_retry_after_the_window_starts_again(tmp_path):
    clock = Clock()
    g = greylist(tmp_path, clock)
    g.check("192.0.2.10", "a@x.test", "bob@y.test")
    clock.now += 5 * 3600
    assert g.check("192.0.2.10", "a@x.test", "bob@y.test") == (False, "new")


def test_auto_allowlist_after_passes_and_its_expiry(tmp_path):
    clock = Clock()
    g = greylist(tmp_path, clock, auto_allowlist=2, max_age=1000.0)
    for rcpt in ("bob@y.test", "carol@y.test"):
        assert not g.check("192.0.2.10", "a@x.test", rcpt)[0]
    clock.now += 301
    assert g.check("192.0.2.10", "a@x.test", "bob@y.test") == (True, "retry")
    assert g.check("192.0.2.10", "z@x.test", "dave@y.test") == (False, "new")  # one pass is not enough
    assert g.check("192.0.2.10", "a@x.test", "carol@y.test") == (True, "retry")
    assert g.check("192.0.2.99", "z@x.test", "erin@y.test") == (True, "allowlisted")
    clock.now += 1001  # silent longer than max_age: forgotten
    assert g.check("192.0.2.10", "q@x.test", "frank@y.test") == (False, "new")


def test_the_store_stays_bounded(tmp_path):
    clock = Clock()
    g = greylist(tmp_path, clock, max_entries=50)
    for n in range(3 * PRUNE_EVERY):  # a flood of forged senders
        clock.now += 1
        g.check("198.51.100.1", f"forged{n}@x.test", "bob@y.test")
    g.prune()
    import sqlite3

    with sqlite3.connect(g.path) as db:
        assert db.execute("SELECT COUNT(*) FROM triplets").fetchone()[0] <= 50
    # the newest survive
    clock.now += 301
    assert g.check("198.51.100.1", f"forged{3 * PRUNE_EVERY - 1}@x.test", "bob@y.test") == (True, "retry")


def test_a_broken_store_lets_mail_through(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "greylist.sqlite").write_bytes(b"this is not a database" * 100)
    assert greylist(tmp_path, Clock()).check("192.0.2.10", "a@x.test", "bob@y.test") == (True, "unavailable")


def _hammer(path, worker: int, results) -> None:
    g = Greylist(path, delay=0.0, retry_window=3600.0, max_age=3600.0, auto_allowlist=0)
    outcomes = [g.check(f"10.{worker}.0.1", "a@x.test", f"r{n}@y.test")[1] for n in range(40)]
    outcomes += [g.check(f"10.{worker}.0.1", "a@x.test", f"r{n}@y.test")[1] for n in range(40)]
    results.put((worker, outcomes))


def test_concurrent_processes_keep_every_triplet(tmp_path):
    """inetd: one process per connection, all writing the same file."""
    path = tmp_path / "run" / "greylist.sqlite"
    results = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_hammer, args=(path, w, results)) for w in range(4)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    for outcomes in got.values():
        assert outcomes == ["new"] * 40 + ["retry"] * 40  # no lost write, no "unavailable"


# -- DNSBL site syntax ------------------------------------------------------------------------


def test_site_syntax_like_postscreen():
    assert parse_site("zen.example.org*3") == ("zen.example.org", None, 3)
    assert parse_site("wl.example.org*-5").weight == -5
    assert parse_site("Bl.Example.NET.").weight == 1
    site = parse_site("bl.example.net=127.0.0.[2..4;11]*2")
    assert [matches(site, f"127.0.0.{n}") for n in (1, 2, 4, 5, 11)] == [False, True, True, False, True]
    assert matches(parse_site("bl.example.net=127.0.0.2"), "127.0.0.2")
    assert not matches(parse_site("bl.example.net=127.0.0.2"), "127.0.0.3")


@pytest.mark.parametrize("bad", ["", "bad zone", "zone*x", "zone=127.0.0*2", "zone=127.0.0.[9..2]", "zone=1.2.3.300"])
def test_bad_sites_are_refused(bad):
    with pytest.raises(ValueError):
        parse_site(bad)


def test_query_names_reverse_octets_and_nibbles():
    assert query_name("192.0.2.99", "zen.test") == "99.2.0.192.zen.test."
    assert query_name("2001:db8::1", "zen.test") == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.zen.test."
