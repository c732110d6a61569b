"""Real milters from Debian packages, started by the tests (issue 12 §2):
opendkim (verify mode), opendmarc, spamass-milter in front of SpamAssassin's
spamd, and rspamd's proxy worker in milter mode.

Each daemon gets a private config in its own folder and listens on a unix
socket there; nothing of the packages' own setup (/etc/..., /run/...) is
used or started.  They work offline: their DNS is a FakeDNS
(tests/fakedns.py) on 127.0.53.N port 53 -- opendkim reaches it through its
resolver's config (unbound: forward-addr), rspamd through its ``dns``
option, and opendmarc, which only knows /etc/resolv.conf, runs in a mount
namespace (``unshare -m``) where a private resolv.conf is mounted over it;
SpamAssassin runs with local tests only (``spamd -L``, no Bayes, no RBLs),
rspamd with its network modules (fuzzy, RBLs, SPF/DKIM/DMARC, ...) off.

A missing program is a test failure, never a skip: .ci/run installs the
packages.  The test module starts each daemon once per session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fakedns import FakeDNS

# program -> the Debian package that has it (.ci/run's apt list)
PACKAGES = {
    "opendkim": "opendkim",
    "opendmarc": "opendmarc",
    "spamd": "spamd",
    "spamc": "spamc",
    "spamass-milter": "spamass-milter",
    "rspamd": "rspamd",
    "unshare": "util-linux",
}
AUTHSERV_ID = "mx.example.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# rspamd's test pattern for its "add header" action (enable_test_patterns)
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def binary(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is missing: apt-get install {PACKAGES[name]} (.ci/run installs it)", pytrace=False)
    return found


def workdir(name: str) -> Path:
    """A folder the daemons' own users (debian-spamd, _rspamd) can read:
    pytest's temporary folders are root's only."""
    d = Path(tempfile.mkdtemp(prefix=f"pymail-{name}-"))
    d.chmod(0o755)
    return d


def port53_dns(zone: dict) -> FakeDNS:
    """A FakeDNS on port 53 of a free 127.0.53.N (for programs that cannot be
    told a port; port 53 of 127.0.0.1 may be someone else's)."""
    for n in range(1, 255):
        try:
            return FakeDNS(zone, address=(f"127.0.53.{n}", 53))
        except OSError:
            continue
    raise RuntimeError("no free 127.0.53.N:53 for the milters' DNS server")


class Daemon:
    """One daemon (and its children, in its own process group), its output
    in NAME.log, serving a milter (or spamd) on the unix socket PATH."""

    def __init__(self, name: str, argv: list[str], home: Path, path: Path, timeout: float = 90.0) -> None:
        self.name = name
        self.home = home
        self.path = path
        self.log = home / f"{name}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait(timeout)

    @property
    def spec(self) -> str:
        return f"unix:{self.path}"

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.path))
                    return
                except OSError:
                    time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not listen on {self.path} in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group after half a second (opendkim
        and rspamd take seconds to wind down; nothing of theirs is kept)."""
        for sig, wait in ((signal.SIGTERM, 0.5), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)  # children (spamd's, rspamd's workers) too
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def unbound_forward(dns: FakeDNS) -> str:
    """Config for libunbound (opendkim's resolver): everything to DNS, .test
    included (a local zone of unbound's by default)."""
    return (
        "server:\n"
        "    do-not-query-localhost: no\n"
        '    local-zone: "test." nodefault\n'
        "forward-zone:\n"
        '    name: "."\n'
        f"    forward-addr: {dns.host}@{dns.port}\n"
    )


def start_opendkim(dns: FakeDNS) -> Daemon:
    home = workdir("opendkim")
    (home / "unbound.conf").write_text(unbound_forward(dns))
    (home / "opendkim.conf").write_text(
        "Mode v\n"
        f"Socket local:{home}/milter.sock\n"
        f"AuthservID {AUTHSERV_ID}\n"
        f"ResolverConfiguration {home}/unbound.conf\n"
        "AlwaysAddARHeader yes\n"
        # a sender's Authentication-Results claiming our name go, whatever they say
        f"RemoveARFrom {AUTHSERV_ID}\n"
        "RemoveARAll yes\n"
        "Background no\n"
        "Syslog no\n"
        "DNSTimeout 3\n"
    )
    return Daemon("opendkim", [binary("opendkim"), "-f", "-x", str(home / "opendkim.conf")], home, home / "milter.sock")


def start_opendmarc(dns: FakeDNS) -> Daemon:
    """opendmarc takes SPF and DKIM results from the Authentication-Results
    fields of AUTHSERV_ID (pymail's own checks, opendkim's) and rejects
    what fails a p=reject policy."""
    home = workdir("opendmarc")
    if dns.port != 53:
        raise ValueError("opendmarc asks port 53: use port53_dns()")
    (home / "resolv.conf").write_text(f"nameserver {dns.host}\noptions timeout:2 attempts:1\n")
    (home / "ignore").write_text("192.0.2.255\n")  # the default would skip clients on 127.0.0.1
    (home / "opendmarc.conf").write_text(
        f"Socket local:{home}/milter.sock\n"
        f"AuthservID {AUTHSERV_ID}\n"
        f"TrustedAuthservIDs {AUTHSERV_ID}\n"
        f"IgnoreHosts {home}/ignore\n"
        "RejectFailures true\n"
        "SPFSelfValidate false\n"
        "Background false\n"
        "Syslog false\n"
        "PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat\n"
    )
    opendmarc = f"{binary('opendmarc')} -f -c {home}/opendmarc.conf"
    script = f"mount --bind {home}/resolv.conf /etc/resolv.conf && exec {opendmarc}"
    return Daemon("opendmarc", [binary("unshare"), "-m", "sh", "-c", script], home, home / "milter.sock")


def start_spamd() -> Daemon:
    """spamd with the stock rules and local tests only, one child."""
    home = workdir("spamd")
    site = home / "site"
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):  # the plugin list the package ships
        shutil.copy(pre, site)
    (site / "local.cf").write_text("use_bayes 0\nbayes_auto_learn 0\nskip_rbl_checks 1\ndns_available no\n")
    site.chmod(0o755)
    argv = [binary("spamd"), "-L", "-x", "-u", "debian-spamd", f"--siteconfigpath={site}"]
    argv += ["-C", "/usr/share/spamassassin"]
    argv += [f"--socketpath={home}/spamd.sock", "-m", "1", "--min-children=1", "--min-spare=1", "--max-spare=1"]
    argv += ["-s", "stderr", "-H", str(site)]
    return Daemon("spamd", argv, home, home / "spamd.sock")


def start_spamass_milter(spamd: Daemon, reject: bool) -> Daemon:
    """spamass-milter asking SPAMD: REJECT refuses spam (-r -1, 550 5.7.1),
    otherwise it is tagged (X-Spam-Flag: YES, X-Spam-Status: Yes, ...)."""
    home = workdir("spamass")
    argv = [binary("spamass-milter"), "-p", f"{home}/milter.sock"]
    if reject:
        argv += ["-r", "-1"]
    argv += ["--", "-U", str(spamd.path)]
    binary("spamc")
    return Daemon("spamass-milter", argv, home, home / "milter.sock")


def start_rspamd(dns: FakeDNS) -> Daemon:
    """rspamd's stock rules with only the proxy worker, in milter mode and
    scanning itself (self_scan); headers through milter_headers."""
    home = workdir("rspamd")
    local = home / "local.d"
    local.mkdir()
    (home / "rspamd.conf").write_text(
        '.include "$CONFDIR/common.conf"\n'
        "options {\n"
        '    pidfile = "$RUNDIR/rspamd.pid";\n'
        '    .include "$CONFDIR/options.inc"\n'
        '    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"\n'
        "}\n"
        'logging { type = "file"; filename = "$LOGDIR/rspamd-log.txt"; level = "notice"; }\n'
        'worker "rspamd_proxy" {\n'
        f'    bind_socket = "{home}/milter.sock mode=0666";\n'
        "    milter = yes;\n"
        "    timeout = 120s;\n"
        '    upstream "local" { default = yes; self_scan = yes; }\n'
        "    count = 1;\n"
        '    spam_header = "X-Spam";\n'
        '    reject_message = "Spam message rejected";\n'
        "}\n"
    )
    # the stock list of 9,000 public suffixes takes rspamd seconds to compile
    (home / "tlds.dat").write_text("test\nexample\ncom\nnet\norg\n")
    (local / "options.inc").write_text(
        "enable_test_patterns = true;\n"
        f'url_tld = "{home}/tlds.dat";\n'
        f'dns {{ nameserver = ["{dns.host}:{dns.port}"]; timeout = 1s; retransmits = 1; }}\n'
    )
    (local / "milter_headers.conf").write_text(
        'use = ["x-spamd-result", "x-spam-status", "x-spam-level", "x-rspamd-queue-id"];\n'
        "extended_spam_headers = true;\n"
        "skip_local = false;\n"
        "skip_authenticated = false;\n"
    )
    offline = "fuzzy_check rbl surbl phishing asn dkim spf dmarc arc dkim_signing url_redirector neural ratelimit"
    for module in (offline + " greylist replies history_redis reputation multimap whitelist emails").split():
        (local / f"{module}.conf").write_text("enabled = false;\n")
    shutil.chown(home, "_rspamd", "_rspamd")
    argv = [binary("rspamd"), "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", str(home / "rspamd.conf")]
    for var in ("LOCAL_CONFDIR", "RUNDIR", "LOGDIR", "DBDIR"):
        argv += ["--var", f"{var}={home}"]
    argv += ["--var", "CONFDIR=/etc/rspamd"]
    return Daemon("rspamd", argv, home, home / "milter.sock")


def remove(daemon: Daemon) -> None:
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)
