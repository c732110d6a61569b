"""Inbound checks of port 25 mail: SPF, DKIM, DMARC, Authentication-Results.

smtpd asks for them for each transaction of a client outside
``smtpd.trusted_networks`` that did not log in (``checks.enabled``):

* at MAIL FROM, ``Checker.start`` begins the SPF check (``pymta.lib.spf``) in
  a thread of its own, so its lookups run while the client sends RCPT and
  DATA;
* the message text goes into a ``CheckedSink``, which holds it (in memory,
  then in an unlinked file under the queue's tmp/) instead of writing it to
  the queue, because the Authentication-Results field must go on top;
* at the end of DATA -- in the commit Job, off the event loop -- DKIM
  (``pymta.lib.dkimverify``) and DMARC (``pymta.lib.dmarc``) run, the wait
  for SPF included, within ``checks.time_budget`` seconds; then the message
  is refused, or written to the queue under an Authentication-Results field
  (``pymta.lib.authres``) and the Received: field, with every forged
  Authentication-Results claiming our ``hostname`` removed.

DNS goes to ``relay.dns_servers`` (else the system resolver), as for MX
lookups, through one dnspython resolver per process with a small cache.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pymta.lib import arc, authres, dkimverify, dmarc, log, metrics, spf
from pymta.lib.spool import Spool
from pymta.senders import header_addresses
from pymta.smtp_server import Refused, Reply

CHUNK = 1 << 20  # the checked message goes on to the queue writer in chunks of this size
QUARANTINE_HEADER = "X-Pymail-Quarantine"
SPF_RESULTS = 4096  # SPF results kept per process (client, sender, HELO)
CHECK_THREADS = 16  # SPF and DMARC lookups in flight at once, per process

# spf: spf.Result; dkim: [dkimverify.Signature]; dmarc: dmarc.Result; arc: arc.Result;
# reply: a refusal or None; quarantine: deliver with QUARANTINE_HEADER; override: why a
# refusal or quarantine was waived ("" when none: RFC 7489 6.7, a trusted ARC sealer);
# header: the Authentication-Results field; summary: "spf=pass dkim=pass dmarc=pass" for the log
Verdict = namedtuple("Verdict", "spf dkim dmarc arc reply quarantine override header summary")


class _DNSDown(Exception):
    pass


class DNS:
    """Lookups for the checks: relay.dns_servers, a per-call time limit, and a
    cache shared by every session of the process.  Answers are kept here for
    their TTL (a name that does not exist, or has no record of the type, for
    NEGATIVE_TTL): a hit is a dict lookup, with no resolver call, thread
    handoff or metrics line, which is most of what a busy port 25 asks.
    Only lookups that went to a server are counted in the metrics."""

    CACHE_SIZE = 4096
    NEGATIVE_TTL = 60.0
    MAX_TTL = 3600.0

    def __init__(self, cfg) -> None:
        from pymta.routing import _resolver  # noqa: PLC0415 lazy: relay.dns_servers, as MX lookups use

        self.resolver = _resolver(cfg)
        self.resolver.cache = None  # ours below: a hit must cost nothing
        # EDNS (RFC 6891) with the DNS-flag-day payload: a 2048-bit DKIM key or a
        # long SPF record fits one UDP answer instead of a retry over TCP
        self.resolver.use_edns(0, 0, 1232)
        self._cache: dict[tuple[str, str], tuple[float, list]] = {}

    def cached(self, name: str, rdtype: str) -> list | None:
        """The answer still in the cache ([] for none), or None."""
        hit = self._cache.get((name.lower().rstrip("."), rdtype))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def unchanged(self, answers: list) -> bool:
        """Whether every (name, type, answer) given is still the cached answer
        (the same object: not expired, not asked again since)."""
        return all(self.cached(name, rdtype) is answer for name, rdtype, answer in answers)

    def query(self, name: str, rdtype: str, timeout: float) -> list:
        import dns.exception  # noqa: PLC0415 lazy
        import dns.resolver  # noqa: PLC0415 lazy

        key = (name.lower().rstrip("."), rdtype)
        hit = self._cache.get(key)
        started = time.monotonic()
        if hit is not None and hit[0] > started:
            return hit[1]
        if timeout <= 0.01:
            raise _DNSDown("time budget spent")
        result, ttl, answer = "error", 0.0, []
        try:
            found = self.resolver.resolve(name, rdtype, search=False, lifetime=timeout)
            answer, result = list(found), "ok"
            ttl = min(max(found.expiration - time.time(), 0.0), self.MAX_TTL)
            return answer
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            result, ttl = "none", self.NEGATIVE_TTL
            return answer
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            result = "failed"
            raise _DNSDown(type(exc).__name__) from None
        except dns.exception.DNSException:  # a name DNS cannot hold (label too long...): nothing there
            result = "none"
            return answer
        except OSError as exc:
            result = "failed"
            raise _DNSDown(exc.strerror or type(exc).__name__) from None
        finally:
            now = time.monotonic()
            if ttl > 0:
                if len(self._cache) >= self.CACHE_SIZE:
                    self._cache.clear()  # plain dict operations: safe from the check threads
                self._cache[key] = (now + ttl, answer)
            metrics.count_all(
                [
                    ("pymail_dns_lookups_total", 1, {"result": result}),
                    ("pymail_dns_lookup_milliseconds_total", round((now - started) * 1000), {"result": result}),
                ]
            )


class Pending:
    """The SPF check of one transaction: running in the checks' thread pool
    from MAIL FROM on, or -- when the domain's record is in the cache, so the
    check is a few dict lookups -- run by ``wait`` in the thread that needs it,
    which spares two thread handoffs per message."""

    def __init__(self, checker: Checker, ip: str, sender: str, helo: str) -> None:
        self.started = time.monotonic()
        self.args = (ip, sender, helo)
        self.checker = checker
        self._future: Future | None = None
        if not checker.spf_record_cached(self.domain):
            self._future = checker.submit(self._run)

    @property
    def domain(self) -> str:
        _ip, sender, helo = self.args
        return (sender.rpartition("@")[2] if sender else helo).lower()

    def _run(self, budget: float | None = None) -> spf.Result | None:
        try:
            return self.checker.spf(*self.args, budget=budget)
        except Exception as exc:
            log.warning(f"spf check failed: {type(exc).__name__}: {exc}")
            return None

    def wait(self, timeout: float) -> spf.Result:
        if self._future is None:
            result = self._run(timeout) if timeout > 0.01 else None
        else:
            try:
                result = self._future.result(max(timeout, 0.0))
            except TimeoutError:
                result = None
        if result is not None:
            return result
        return spf.Result("temperror", "mailfrom" if self.args[1] else "helo", self.domain, "time budget spent")


class Checker:
    """One per smtpd process (its resolver and cache serve every session)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.budget = cfg["checks.time_budget"]
        self.authserv_id = cfg["hostname"]
        self._dns: DNS | None = None
        self._spf_results: dict[tuple[str, str, str], tuple[spf.Result, list]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def dns(self) -> DNS:
        with self._lock:
            if self._dns is None:
                self._dns = DNS(self.cfg)
            return self._dns

    def submit(self, fn, *args) -> Future:
        """Run ``fn`` in the process's pool of check threads: SPF at MAIL FROM and the
        DMARC record lookups run beside the DKIM work of the end of DATA.  Threads
        are made once, not per message (a thread start is a clone and an 8 MB stack)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="check")
        return self._pool.submit(fn, *args)

    def start(self, ip: str, sender: str, helo: str) -> Pending:
        return Pending(self, ip, sender, helo)

    def spf_record_cached(self, domain: str) -> bool:
        """Whether ``domain``'s TXT answer is in the cache (never makes the resolver:
        its imports must not run on the event loop)."""
        return self._dns is not None and self._dns.cached(domain, "TXT") is not None

    def spf(self, ip: str, sender: str, helo: str, budget: float | None = None) -> spf.Result:
        """The SPF result; kept for the same client, sender and HELO while
        every DNS answer it came from is still the cached one (a sender who
        mails from one address again and again costs pyspf once per TTL)."""
        dns = self.dns
        key = (ip, sender, helo)
        hit = self._spf_results.get(key)
        if hit is not None and dns.unchanged(hit[1]):
            return hit[0]
        used: list = []
        failed = False

        def lookup(name, rdtype, timeout):
            nonlocal failed
            try:
                answer = dns.query(name, rdtype, timeout)
            except _DNSDown as exc:
                failed = True
                raise spf.TempFail(str(exc)) from None
            used.append((name, rdtype, answer))
            return answer

        result = spf.check(ip, sender, helo, lookup, self.budget if budget is None else budget)
        if used and not failed and result.result != "temperror" and dns.unchanged(used):
            if len(self._spf_results) >= SPF_RESULTS:
                self._spf_results.clear()  # plain dict operations: safe from the check threads
            self._spf_results[key] = (result, used)
        return result

    def evaluate(self, pending: Pending, message: bytes, deadline: float) -> Verdict:
        """Every check of one message (LF line ends), within ``deadline`` (monotonic)."""
        dns = self.dns
        block = _header_block(message)
        from_domain = _from_domain(block)

        def txt_strings(name: str) -> list[str]:
            try:
                found = dns.query(name, "TXT", deadline - time.monotonic())
            except _DNSDown as exc:
                raise dmarc.TempFail(str(exc)) from None
            return [b"".join(r.strings).decode("utf-8", "replace") for r in found]

        def dkim_key(name: str, timeout=None) -> bytes | None:
            try:
                found = dns.query(name, "TXT", deadline - time.monotonic())
            except _DNSDown as exc:
                raise dkimverify.TempFail(str(exc)) from None
            return b"".join(found[0].strings) if found else None

        # the DMARC record lookups start now, beside the DKIM key lookups
        records: dict[str, list[str] | Exception] = {}

        def prefetch() -> None:
            for name in names:
                try:
                    records[name] = txt_strings(name)
                except dmarc.TempFail as exc:
                    records[name] = exc

        names = _dmarc_names(from_domain)
        fetcher = self.submit(prefetch) if any(dns.cached(n, "TXT") is None for n in names) else None
        # dkimpy wants CRLF: a copy of the whole message, made only when there is a signature or seal to check
        signed = dkimverify.has_field(block, b"dkim-signature") or dkimverify.has_field(block, b"arc-seal")
        crlf = message.replace(b"\n", b"\r\n") if signed else b""
        signatures = dkimverify.verify_all(
            crlf, dkim_key, self.cfg["checks.dkim_max_signatures"], self.cfg["checks.dkim_min_key_bits"]
        )
        arc_result = arc.verify(crlf, dkim_key, self.cfg["checks.dkim_min_key_bits"])
        spf_result = pending.wait(deadline - time.monotonic())
        if fetcher is not None:
            wait([fetcher], max(deadline - time.monotonic(), 0.0))

        def cached_txt(name: str) -> list[str]:
            found = records.get(name)
            if isinstance(found, Exception):
                raise found
            if found is None:
                if fetcher is None or fetcher.done():
                    return txt_strings(name)
                raise dmarc.TempFail("time budget spent")
            return found

        temperrors = spf_result.result == "temperror" or any(s.result == "temperror" for s in signatures)
        dmarc_result = dmarc.evaluate(
            from_domain,
            cached_txt,
            spf_result.result,
            spf_result.domain,
            [s.domain for s in signatures if s.result == "pass"],
            temperrors,
        )
        reply, quarantine = self.decide(pending, spf_result, dmarc_result)
        override = ""
        if (reply is not None and reply.code >= 500) or quarantine:
            override = self.arc_override(arc_result)
            if override:
                reply, quarantine = None, False
        ip = pending.args[0]
        return Verdict(
            spf_result,
            signatures,
            dmarc_result,
            arc_result,
            reply,
            quarantine,
            override,
            self.header(spf_result, signatures, dmarc_result, arc_result, override, ip),
            summary(spf_result, signatures, dmarc_result, arc_result, override),
        )

    def arc_override(self, arc_result) -> str:
        """The reason a failing message is let through (RFC 7489 6.7 trusted_forwarder),
        or "": a passing ARC chain whose latest sealer is in checks.arc_trusted_sealers."""
        trusted = {d.lower().rstrip(".") for d in self.cfg["checks.arc_trusted_sealers"]}
        if arc_result.result == "pass" and arc_result.sealer in trusted:
            return f"trusted_forwarder arc=pass as[{arc_result.instance}].d={arc_result.sealer}"
        return ""

    def decide(self, pending: Pending, spf_result, dmarc_result) -> tuple[Reply | None, bool]:
        """(refusal or None, quarantine?) from the results and the admin's choices."""
        cfg = self.cfg
        defer = cfg["checks.temperror"] == "defer"
        if dmarc_result.result == "fail":
            action = {"reject": cfg["checks.dmarc_reject"], "quarantine": cfg["checks.dmarc_quarantine"]}.get(
                dmarc_result.disposition, "record"
            )
            if action == "reject":
                return Reply(550, "5.7.1", f"Email rejected per DMARC policy for {dmarc_result.domain}"), False
            return None, action == "quarantine"
        if dmarc_result.result == "pass":
            return None, False
        if dmarc_result.result == "temperror":
            if defer:
                return Reply(
                    451, "4.7.1", f"Temporary DNS failure checking the DMARC policy of {dmarc_result.domain}"
                ), False
            return None, False
        # DMARC does not decide (no policy published, or no usable From:): SPF may
        ip, sender, _helo = pending.args
        if spf_result.result in cfg["checks.spf_reject"]:
            who = sender or f"postmaster@{spf_result.domain}"
            if spf_result.result == "permerror":
                return Reply(550, "5.7.24", f"SPF validation error for {spf_result.domain}: {spf_result.reason}"), False
            return Reply(
                550, "5.7.23", f"SPF validation failed: {spf_result.domain} does not permit [{ip}] to send as <{who}>"
            ), False
        if spf_result.result == "temperror" and defer:
            return Reply(451, "4.7.24", f"Temporary DNS failure checking SPF of {spf_result.domain}"), False
        return None, False

    def header(self, spf_result, signatures, dmarc_result, arc_result=arc.NONE, override="", ip="") -> bytes:
        results = []
        if spf_result.identity == "helo":
            results.append(authres.result("spf", spf_result.result, spf_result.reason, smtp_helo=spf_result.domain))
        else:
            results.append(authres.result("spf", spf_result.result, spf_result.reason, smtp_mailfrom=spf_result.domain))
        for s in signatures:
            results.append(
                authres.result(
                    "dkim",
                    s.result,
                    s.reason,
                    header_d=s.domain,
                    header_s=s.selector,
                    header_a=s.algorithm,
                    header_b=s.bprefix,
                )
            )
        if not signatures:
            results.append("dkim=none")
        if arc_result.result != "none":  # RFC 8617 10.2: arc=, with the client's address
            reason = f"as[{arc_result.instance}].d={arc_result.sealer}" if arc_result.sealer else ""
            if arc_result.reason:
                reason = f"{reason} {arc_result.reason}".strip()
            oldest = str(arc_result.oldest_pass) if arc_result.result == "pass" else ""
            results.append(
                authres.result("arc", arc_result.result, reason, **{"header.oldest-pass": oldest, "smtp.remote-ip": ip})
            )
        record = dmarc_result.record
        reason = dmarc_result.reason
        if record:
            disposition = "none" if override else dmarc_result.disposition
            reason = f"p={record['p']} sp={record['sp']} dis={disposition}" + (f" {reason}" if reason else "")
        if override:
            reason = f"{reason} override={override}".strip()
        results.append(authres.result("dmarc", dmarc_result.result, reason, header_from=dmarc_result.domain))
        return authres.header(self.authserv_id, results)


def summary(spf_result, signatures, dmarc_result, arc_result=arc.NONE, override="") -> str:
    dkim = ",".join(s.result for s in signatures) or "none"
    text = f"spf={spf_result.result} dkim={dkim} dmarc={dmarc_result.result}"
    if arc_result.result != "none":
        text += f" arc={arc_result.result}"
    if override:
        text += f" override=({override})"
    return text


def _header_block(message: bytes) -> bytes:
    if message.startswith(b"\n"):
        return b""
    end = message.find(b"\n\n")
    return message if end < 0 else message[: end + 1]


def _from_domain(block: bytes) -> str | None:
    """The one domain of the From: field(s), or None (none, unreadable, several)."""
    try:
        addresses = header_addresses(block)
    except Exception:
        return None
    if not addresses:
        return None
    domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses}
    if len(domains) != 1:
        return None
    domain = domains.pop()
    return domain if domain and "." in domain and domain.isascii() else None


def _dmarc_names(domain: str | None) -> list[str]:
    if not domain:
        return []
    names = [f"_dmarc.{domain}"]
    org = dmarc.organizational_domain(domain)
    if org != domain:
        names.append(f"_dmarc.{org}")
    return names


class CheckedSink:
    """Holds one message until its checks are done, then refuses it
    (``Refused``) or writes it to ``inner`` (smtpd's queue sink) under
    Authentication-Results and Received:."""

    def __init__(self, inner, checker: Checker, pending: Pending, session, envelope, received: bytes, tmp_dir) -> None:
        self.inner = inner
        self.queue_id = inner.queue_id
        self.checker = checker
        self.pending = pending
        self.session = session
        self.envelope = envelope
        self.received = received
        self.tmp_dir = tmp_dir
        self.summary = ""
        self.metric_events: list = []  # after a commit: smtpd counts them with its accepted count, in one write
        self._spool = Spool(tmp_dir)

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data: bytes) -> None:
        self._spool.write(data)

    def commit(self) -> str:
        started = time.monotonic()
        message = self._spool.getvalue()  # DKIM needs it whole
        self._spool.close()
        verdict = self.checker.evaluate(self.pending, message, started + self.checker.budget)
        events = [
            ("pymail_checked_messages_total", 1, {}),
            ("pymail_check_milliseconds_total", round((time.monotonic() - started) * 1000), {}),
        ]
        self.summary = verdict.summary
        try:
            qid = self._pass_on(message, verdict, events)
        except BaseException:
            metrics.count_all(events)
            raise
        self.metric_events = events
        return qid

    def _pass_on(self, message: bytes, verdict: Verdict, events: list) -> str:
        info = self.session.info
        if verdict.reply is not None:
            reply = verdict.reply
            log.info(
                f"reject: END-OF-MESSAGE from [{info.peer_ip}]: {reply.code} {reply.enhanced} {reply.text}; "
                f"from=<{self.envelope.mail_from}> helo=<{log.printable(self.session.helo or '')}> {verdict.summary}",
                self.queue_id,
            )
            reason = "check_temperror" if reply.code < 500 else "spf" if reply.enhanced.startswith("5.7.2") else "dmarc"
            events.append(("pymail_smtp_refused_total", 1, {"service": info.service, "reason": reason}))
            raise Refused(reply)
        block = _header_block(message)
        stripped, removed = authres.strip(block, self.checker.authserv_id)
        if removed:
            log.info(f"removed {removed} Authentication-Results field(s) claiming to be ours", self.queue_id)
        top = verdict.header
        if verdict.quarantine:
            top += f"{QUARANTINE_HEADER}: DMARC policy of {verdict.dmarc.domain}\n".encode()
        self.inner.write(top + self.received + stripped)
        body = memoryview(message)[len(block) :]
        for start in range(0, len(body), CHUNK):
            self.inner.write(bytes(body[start : start + CHUNK]))
        return self.inner.commit()

    def abort(self) -> None:
        self._spool.close()
        self.inner.abort()
