"""Metrics (issue 15 §3): every metric moves when its event happens.

Real daemons (listening and inetd), the real queue runner, ``pymail stats``
and the HTTP listener scraped with urllib; the text is read by the small
Prometheus text-format parser below, which refuses what Prometheus would.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import PASSWORD, env_with_repo, free_port, wait_port
from pymta.lib import metrics as events

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf'^({NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\}})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """The Prometheus text format (0.0.4): '# HELP name text', '# TYPE name type' before its samples,
    then 'name{label="v",...} value' lines; raises AssertionError on anything else."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset], float] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.fullmatch(rf"# HELP {NAME} .*", line), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(NAME, name) and kind in TYPES and name not in typed, line
            typed[name] = kind
            continue
        assert not line.startswith("#") and line, line
        match = SAMPLE.match(line)
        assert match, f"not a sample: {line!r}"
        name, labels, value = match.groups()
        assert name in typed, f"{name} has no # TYPE before it"
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in samples, f"twice: {line}"
        samples[key] = float(value)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stats(system) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pymta.cli", "stats", "-C", str(system.config)],
        capture_output=True,
        timeout=60,
        env=env_with_repo(),
    )
    assert done.returncode == 0, done.stderr
    return parse(done.stdout.decode())


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(answer.read().decode())


def start_listener(system) -> int:
    port = free_port()
    system.start(system.program("pymta.metrics_http", "--listen", f"127.0.0.1:{port}"))
    wait_port(port)
    return port


def wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


ALIASES = "postmaster: alice\nlater: |exit 75\nnever: |exit 67\n"


def cause_mail_events(smtp_port: int, imap_port: int, pop_port: int) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("carol@elsewhere.test")
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("nobody@example.test")[0] == 550  # unknown_user
        s.data(b"Subject: one\r\n\r\nbody\r\n")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        code, _ = s.docmd("MAIL FROM:<carol@elsewhere.test> SIZE=999999999999")
        assert code == 552  # too_big
    imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
    imap.login("alice@example.test", PASSWORD)
    imap.logout()
    imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice@example.test", "wrong")
    imap.logout()
    pop = poplib.POP3("127.0.0.1", pop_port, timeout=30)
    pop.user("alice@example.test")
    pop.pass_(PASSWORD)
    pop.quit()
    pop = poplib.POP3("127.0.0.1", pop_port, timeout=30)
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.quit()


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_every_metric_moves_when_its_event_happens(make_mailsys, mode):
    system = make_mailsys("[qrunner]\nretry_min = 3600\n")
    (system.root / "aliases").write_text(ALIASES)
    smtp_port = system.start_daemon("pymta.smtpd", mode)
    imap_port = system.start_daemon("pyimap.imapd", mode)
    pop_port = system.start_daemon("pypop.pop3d", mode)
    http_port = start_listener(system)
    # each start's port probe is a session, its counter written within a second
    wait_for(
        lambda: all(value(stats(system), "pymail_sessions_total", service=s) >= 1 for s in ("smtp", "imap", "pop3"))
    )

    before = stats(system)
    assert value(scrape(http_port), "pymail_sessions_total", service="smtp") == value(
        before, "pymail_sessions_total", service="smtp"
    )
    assert value(before, "pymail_queue_messages", state="new") == 0

    cause_mail_events(smtp_port, imap_port, pop_port)

    def moved(after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    def all_written() -> bool:
        # a listening daemon keeps its loop-side counters (sessions, refusals) in
        # memory and writes them within a second; a queued message's just after its 250
        now = stats(system)
        return (
            moved(now, "pymail_smtp_accepted_total", service="smtp") == 1
            and all(moved(now, "pymail_sessions_total", service=service) == 2 for service in ("smtp", "imap", "pop3"))
            and all(
                moved(now, "pymail_smtp_refused_total", service="smtp", reason=reason) == 1
                for reason in ("unknown_user", "too_big")
            )
        )

    wait_for(all_written)
    # without a runner the accepted message waits in new/
    queued = stats(system)
    assert value(queued, "pymail_queue_messages", state="new") == 1
    assert value(queued, "pymail_queue_oldest_age_seconds", state="new") > 0

    for after in (queued, scrape(http_port)):
        for service in ("smtp", "imap", "pop3"):
            assert moved(after, "pymail_sessions_total", service=service) == 2, service
        for service in ("imap", "pop3"):
            assert moved(after, "pymail_logins_total", service=service, result="ok") == 1, service
            assert moved(after, "pymail_logins_total", service=service, result="failed") == 1, service
        assert moved(after, "pymail_smtp_accepted_total", service="smtp") == 1
        assert moved(after, "pymail_smtp_refused_total", service="smtp", reason="unknown_user") == 1
        assert moved(after, "pymail_smtp_refused_total", service="smtp", reason="too_big") == 1
        assert moved(after, "pymail_smtp_refused_total", service="smtp", reason="relay_denied") == 0

    # the runner: one delivered, one deferred (|exit 75), one bounced (|exit 67) and its notice
    runner = system.start_qrunner()
    system.wait_messages(1)
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
        s.sendmail("alice@example.test", ["later@example.test"], b"Subject: later\r\n\r\nx\r\n")
        s.sendmail("alice@example.test", ["never@example.test"], b"Subject: never\r\n\r\nx\r\n")
    system.wait_messages(2)  # the non-delivery notice reached alice

    def runner_done() -> bool:
        now = stats(system)
        return (
            value(now, "pymail_queue_messages", state="deferred") == 1
            and moved(now, "pymail_deliveries_total", result="delivered") == 2
        )

    wait_for(runner_done)
    after = scrape(http_port)
    assert moved(after, "pymail_deliveries_total", result="delivered") == 2  # the message, the notice
    assert moved(after, "pymail_deliveries_total", result="deferred") == 1
    assert moved(after, "pymail_deliveries_total", result="bounced") == 1
    assert moved(after, "pymail_bounces_total", kind="failure") == 1
    assert value(after, "pymail_queue_messages", state="deferred") == 1
    assert value(after, "pymail_queue_messages", state="new") == 0
    assert value(after, "pymail_queue_oldest_age_seconds", state="deferred") > 0

    # RSS and CPU of the runner, the listener and (listening) each daemon, read from /proc
    programs = {dict(labels)["program"]: v for (name, labels), v in after.items() if name.endswith("memory_bytes")}
    assert programs.get("qrunner", 0) > 1_000_000 and programs.get("metrics_http", 0) > 1_000_000, programs
    if mode == "listen":
        assert {"smtpd", "imapd", "pop3d"} <= set(programs), programs
    cpu = [(dict(labels)["program"], v) for (name, labels), v in after.items() if name.endswith("cpu_seconds_total")]
    assert any(p == "qrunner" and v > 0 for p, v in cpu), cpu
    runner.terminate()


def test_a_compaction_in_the_middle_loses_nothing(mailsys):
    """Writers in several processes while compactions run: the totals are exact."""
    events.setup(mailsys.root)
    writers, per_writer = 4, 300
    code = (
        "import sys; from pymta.lib import metrics\n"
        f"metrics.setup({str(mailsys.root)!r})\n"
        f"for i in range({per_writer}): metrics.count('pymail_sessions_total', service='smtp')\n"
        "sys.exit(metrics.lost)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env_with_repo()) for _ in range(writers)]
    folded = 0
    while any(p.poll() is None for p in procs):
        folded += events.compact(mailsys.root)
    assert [p.wait() for p in procs] == [0] * writers
    folded += events.compact(mailsys.root)
    assert folded == writers * per_writer
    assert events.totals(mailsys.root)['pymail_sessions_total{service="smtp"}'] == writers * per_writer
    assert os.path.getsize(mailsys.root / "run" / events.LOG) == 0
    # and through pymail stats, after more events in the log beside the base
    events.count("pymail_sessions_total", service="smtp")
    assert value(stats(mailsys), "pymail_sessions_total", service="smtp") == writers * per_writer + 1


def test_an_unwritable_run_dir_does_not_break_a_session(mailsys):
    """A metrics failure is counted in the process, never raised (here run/ is a file)."""
    (mailsys.root / "run").write_text("not a folder")
    port = mailsys.start_smtpd("inetd")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("carol@elsewhere.test", ["alice@example.test"], b"Subject: x\r\n\r\nx\r\n")
    events.setup(mailsys.root)
    events.count("pymail_sessions_total", service="smtp")
    assert events.lost == 1


def test_pymail_run_starts_the_listener_when_listen_metrics_is_set(make_mailsys):
    port = free_port()
    off = "".join(f'{s} = ""\n' for s in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"))
    system = make_mailsys(f'[listen]\n{off}metrics = "127.0.0.1:{port}"\n')
    run = system.start([sys.executable, "-m", "pymta.cli", "run", "-C", str(system.config)])
    try:
        wait_port(port, timeout=30, proc=run)
        samples = scrape(port)
        programs = {dict(labels)["program"] for (name, labels) in samples if name.endswith("memory_bytes")}
        assert {"metrics", "qrunner"} <= programs, programs
    finally:
        run.terminate()
        run.wait(timeout=20)


def test_a_loop_side_counter_waits_for_the_next_write_or_a_flush(mailsys):
    """count_later (a listening daemon's session and refusal counters, on its
    event loop) touches no file: its line goes out with the process's next
    write, or with flush(); the daemon's hook hears of the first waiting line.
    Without a hook (inetd, tools) it is written at once."""
    events.setup(mailsys.root)
    log = mailsys.root / "run" / events.LOG
    events.flush()  # nothing waits: nothing is written
    before = log.read_bytes() if log.exists() else b""
    woken: list[int] = []
    events.defer_with(lambda: woken.append(1))
    try:
        events.count_later("pymail_sessions_total", service="smtp")
        events.count_later("pymail_smtp_refused_total", service="smtp", reason="too_big")
        assert events.pending() and woken == [1]  # told once, at the first
        assert (log.read_bytes() if log.exists() else b"") == before
        events.count("pymail_smtp_accepted_total", service="smtp")  # a job's counter carries them along
        assert log.read_bytes() == before + (
            b'pymail_sessions_total{service="smtp"}\n'
            b'pymail_smtp_refused_total{service="smtp",reason="too_big"}\n'
            b'pymail_smtp_accepted_total{service="smtp"}\n'
        )
        assert not events.pending()
        events.count_later("pymail_sessions_total", service="imap")
        assert woken == [1, 1]
        events.flush()
        assert log.read_bytes().endswith(b'pymail_sessions_total{service="imap"}\n') and not events.pending()
    finally:
        events.defer_with(None)
    events.count_later("pymail_sessions_total", service="pop3")  # no hook: at once
    assert log.read_bytes().endswith(b'pymail_sessions_total{service="pop3"}\n') and not events.pending()
