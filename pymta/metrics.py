"""The Prometheus text exposition (format 0.0.4) of a pymail installation.

Made at scrape time by ``pymail stats`` and by the metrics listener
(pymta/metrics_http.py) from three sources:

- the event counters every process appends to ``ROOT/run/metrics.log``
  (pymta/lib/metrics.py), added to ``ROOT/run/metrics.base``;
- the queue, through its one door (``Queue.census``): entries and the
  oldest entry's age per state;
- ``/proc``: RSS and CPU time of every process whose command line names
  this configuration (the daemons, their workers, the runner, the listener).

Every counter of a fixed label set is written, 0 before its first event, so
a dashboard has a series to show from the start.
"""

from __future__ import annotations

import os
import time

from pymta.lib import metrics
from pymta.queue import Queue

SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
SMTP_SERVICES = ("smtp", "submission", "smtps")
LOGIN_RESULTS = ("ok", "failed", "refused")
# why smtpd refused a message or a recipient (pymta/smtpd.py and pymta/authcheck.py)
REFUSAL_REASONS = (
    "unknown_user",
    "relay_denied",
    "dnsbl",
    "greylist",
    "rate_limit",
    "sender_not_owned",
    "too_big",
    "spf",
    "dmarc",
    "check_temperror",
    "lookup_failure",
)
DELIVERY_RESULTS = ("delivered", "deferred", "bounced")
BOUNCE_KINDS = ("failure", "delay")
QUEUE_STATES = ("new", "deferred", "hold")
DNS_RESULTS = ("ok", "none", "failed", "error")

# name -> (type, help, the label sets written even before an event)
COUNTERS: dict[str, tuple[str, list[dict[str, str]]]] = {
    "pymail_sessions_total": (
        "Connections served, per service (every driver: inetd, listening, workers).",
        [{"service": s} for s in SERVICES],
    ),
    "pymail_logins_total": (
        "Password checks (SMTP AUTH, POP3, IMAP): ok, failed, or refused unasked (failure budget spent).",
        [{"service": s, "result": r} for s in SERVICES for r in LOGIN_RESULTS],
    ),
    "pymail_smtp_accepted_total": (
        "Messages smtpd queued.",
        [{"service": s} for s in SMTP_SERVICES],
    ),
    "pymail_smtp_refused_total": (
        "Senders, recipients and messages smtpd refused, by reason.",
        [{"service": s, "reason": r} for s in SMTP_SERVICES for r in REFUSAL_REASONS],
    ),
    "pymail_deliveries_total": (
        "Delivery attempts of one recipient by the queue runner, by result.",
        [{"result": r} for r in DELIVERY_RESULTS],
    ),
    "pymail_checked_messages_total": (
        "Messages smtpd ran the inbound checks on (SPF, DKIM, DMARC, ARC) at the end of DATA.",
        [{}],
    ),
    "pymail_check_milliseconds_total": (
        "Time those checks held the end of DATA, in ms (divide by pymail_checked_messages_total for the mean).",
        [{}],
    ),
    "pymail_dns_lookups_total": (
        "DNS lookups of the inbound checks, by result: ok, none (NXDOMAIN, no answer), failed (timeout, SERVFAIL).",
        [{"result": r} for r in DNS_RESULTS],
    ),
    "pymail_dns_lookup_milliseconds_total": (
        "Time those DNS lookups took, in ms, by result (divide by pymail_dns_lookups_total for the mean latency).",
        [{"result": r} for r in DNS_RESULTS],
    ),
    "pymail_bounces_total": (
        "Notifications the queue runner sent to senders: failure (non-delivery) or delay.",
        [{"kind": k} for k in BOUNCE_KINDS],
    ),
}


def _split(key: str) -> tuple[str, str]:
    """'name{labels}' -> (name, '{labels}')."""
    brace = key.find("{")
    return (key, "") if brace < 0 else (key[:brace], key[brace:])


def _process_name(argv: list[str]) -> str:
    for flag in ("--service",):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].rpartition(".")[2]
    for arg in argv[:3]:
        base = os.path.basename(arg)
        if base and not base.startswith("python"):
            return base
    return os.path.basename(argv[0]) if argv else "?"


def processes(names: set[str], exclude: int | None = None) -> list[tuple[int, str, int, float]]:
    """(pid, program, RSS bytes, CPU seconds) of the processes whose command
    line holds one of ``names`` as an argument (or as ``-C NAME``/``--config=NAME``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode("utf-8", "replace").split("\0")[:-1]
            if not any(arg in names or arg.partition("=")[2] in names for arg in argv[1:]):
                continue
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
            with open(f"/proc/{entry}/statm", "rb") as fh:
                rss_pages = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        fields = stat[stat.rfind(")") + 2 :].split()
        try:
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
        except (IndexError, ValueError):
            continue
        out.append((int(entry), _process_name(argv), rss_pages * page, cpu))
    return out


def _config_names(cfg) -> set[str]:
    names = {str(cfg.root), os.path.realpath(str(cfg.root))}
    if cfg.path is not None:
        names |= {str(cfg.path), os.path.realpath(str(cfg.path))}
    return names


def render(cfg, *, exclude_pid: int | None = None, now: float | None = None) -> str:
    """The whole exposition, as text."""
    now = time.time() if now is None else now
    lines: list[str] = []
    counts = metrics.totals(cfg.root)
    for name, (help_text, fixed) in COUNTERS.items():
        values = {metrics.line(name, labels).decode(): 0 for labels in fixed}
        for key, value in counts.items():
            if _split(key)[0] == name:
                values[key] = values.get(key, 0) + value
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f"{key} {value}" for key, value in sorted(values.items())]
    others: dict[str, list[str]] = {}
    for key, value in sorted(counts.items()):
        name = _split(key)[0]
        if name not in COUNTERS and name.startswith("pymail_") and name.replace("_", "").isalnum():
            others.setdefault(name, []).append(f"{key} {value}")
    for name, samples in others.items():  # counted by a newer pymail than this reader
        lines += [f"# TYPE {name} counter", *samples]

    census = Queue(cfg.queue_dir).census()
    lines += [
        "# HELP pymail_queue_messages Entries in the queue, by state (new: not yet tried).",
        "# TYPE pymail_queue_messages gauge",
    ]
    lines += [f'pymail_queue_messages{{state="{s}"}} {census[s][0]}' for s in QUEUE_STATES]
    lines += [
        "# HELP pymail_queue_oldest_age_seconds Age of the oldest entry in each state (0 when empty).",
        "# TYPE pymail_queue_oldest_age_seconds gauge",
    ]
    for state in QUEUE_STATES:
        oldest = census[state][1]
        lines.append(
            f'pymail_queue_oldest_age_seconds{{state="{state}"}} {max(0.0, now - oldest) if oldest else 0:.3f}'
        )

    procs = processes(_config_names(cfg), exclude_pid)
    lines += [
        "# HELP pymail_process_resident_memory_bytes Resident memory of each pymail process of this configuration.",
        "# TYPE pymail_process_resident_memory_bytes gauge",
    ]
    lines += [
        f'pymail_process_resident_memory_bytes{{program="{metrics.escape(p)}",pid="{pid}"}} {rss}'
        for pid, p, rss, _ in procs
    ]
    lines += [
        "# HELP pymail_process_cpu_seconds_total CPU time (user and system) of each pymail process of this config.",
        "# TYPE pymail_process_cpu_seconds_total counter",
    ]
    lines += [
        f'pymail_process_cpu_seconds_total{{program="{metrics.escape(p)}",pid="{pid}"}} {cpu:.2f}'
        for pid, p, _, cpu in procs
    ]

    try:
        size = os.stat(os.path.join(str(cfg.root), "run", metrics.LOG)).st_size
    except OSError:
        size = 0
    lines += [
        "# HELP pymail_metrics_log_bytes Size of ROOT/run/metrics.log, the events waiting for compaction.",
        "# TYPE pymail_metrics_log_bytes gauge",
        f"pymail_metrics_log_bytes {size}",
    ]
    return "\n".join(lines) + "\n"
