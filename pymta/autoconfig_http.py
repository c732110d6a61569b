"""The autoconfig listener: a tiny HTTP(S) server for pymta/autoconfig.py's answers.

Off unless asked for: ``pymail autoconfig --listen HOST:PORT`` in the
foreground, or ``listen.autoconfig`` set, when ``pymail run`` starts it as

    python3 -m pymta.autoconfig_http -C FILE --listen HOST:PORT [--service autoconfig]

(a socket passed by systemd, LISTEN_FDS, is used instead of --listen).  It
binds, loads the certificate when ``autoconfig.tls`` is set, becomes
``daemon_user``, and then only answers GET/HEAD/POST on four paths from
answers made once at start-up; request bodies (autodiscover) are capped and
their DTDs refused.  Each request is one log line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from pymta import autoconfig
from pymta.lib import activation, config, log
from pymta.lib.cliargs import UsageError, fail, getopt
from pymta.lib.privilege import PrivilegeError, become_account, daemon_account
from pymta.lib.sysexits import EX_CONFIG, EX_OK, EX_OSERR

MAX_BODY = 16 * 1024
MAX_REQUESTS = 64  # served at once; more are closed unanswered
TIMEOUT = 15.0

USAGE = "usage: python3 -m pymta.autoconfig_http [-C FILE] [--listen HOST:PORT] [--service NAME]"


class Answers:
    """Every answer, made once from the config: path -> (content type, body)."""

    XML = "application/xml; charset=utf-8"
    PROFILE = "application/x-apple-aspen-config"

    def __init__(self, s: autoconfig.Settings) -> None:
        self.settings = s
        self.thunderbird = autoconfig.thunderbird(s)

    def get(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        path = path.lower()
        if path.lstrip("/") in autoconfig.THUNDERBIRD_PATHS:
            return 200, self.XML, self.thunderbird
        if path.lstrip("/") == autoconfig.AUTODISCOVER_PATH:
            return 200, self.XML, autoconfig.autodiscover(self.settings, None)
        if path.lstrip("/") == autoconfig.MOBILECONFIG_PATH:
            given = (query.get("emailaddress") or query.get("email") or [""])[0]
            address = autoconfig.valid_address(given) if given else None
            if given and address is None:
                return 400, "text/plain", b"not an address\n"
            return 200, self.PROFILE, autoconfig.mobileconfig(self.settings, address)
        return 404, "text/plain", b"not found\n"

    def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path.lower().lstrip("/") != autoconfig.AUTODISCOVER_PATH:
            return 405, "text/plain", b"method not allowed\n"
        try:
            address = autoconfig.autodiscover_address(body)
        except autoconfig.BadRequest as exc:
            return 400, "text/plain", f"{exc}\n".encode()
        return 200, self.XML, autoconfig.autodiscover(self.settings, address)


class Handler(BaseHTTPRequestHandler):
    server_version = "pymail-autoconfig"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    timeout = TIMEOUT
    server: Server

    def setup(self) -> None:
        super().setup()
        if hasattr(self.request, "do_handshake"):
            self.request.do_handshake()

    def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if status == 200 else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self._send(*self.server.answers.get(url.path, parse_qs(url.query)))

    def do_HEAD(self) -> None:
        url = urlsplit(self.path)
        self._send(*self.server.answers.get(url.path, parse_qs(url.query)), head=True)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, "text/plain", b"length required\n")
            return
        if not 0 <= length <= MAX_BODY:
            self._send(413, "text/plain", b"request too large\n")
            return
        body = self.rfile.read(length)
        self._send(*self.server.answers.post(urlsplit(self.path).path, body))

    def log_request(self, code="-", size="-") -> None:
        log.info(f"{self.client_address[0]} {log.printable(self.command or '-')} {log.printable(self.path)} {code}")

    def log_error(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        log.info(f"{self.client_address[0]}: {log.printable(format % args)}")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock, answers: Answers, tls=None) -> None:
        self.answers = answers
        self.tls = tls
        self.busy = threading.BoundedSemaphore(MAX_REQUESTS)
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock

    def get_request(self):
        conn, addr = self.socket.accept()
        conn.settimeout(TIMEOUT)
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def process_request(self, request, client_address) -> None:
        if not self.busy.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.busy.release()

    def handle_error(self, request, client_address) -> None:
        log.info(f"{client_address[0]}: {log.printable(str(sys.exc_info()[1]))}")


def make_server(cfg: config.Config, sock) -> Server:
    """The server over a bound socket, TLS loaded; raises AutoconfigError, TLSConfigError."""
    tls = None
    if cfg.get("autoconfig.tls"):
        from pymta.lib import tls as tlsmod  # noqa: PLC0415 lazy

        tls = tlsmod.server_context(cfg.path_of("tls_cert"), cfg.path_of("tls_key"))
    return Server(sock, Answers(autoconfig.settings(cfg)), tls)


def drop_privileges(cfg: config.Config) -> str | None:
    """Become daemon_user when root; the problem, or None."""
    if os.geteuid() != 0:
        return None
    name = cfg["daemon_user"]
    if not name:
        return 'started as root with no daemon_user: set one, or daemon_user = "root" on purpose'
    if name == "root":
        return None
    pw, problem = daemon_account(name)
    if problem:
        return problem
    from pymta.lib.pdeathsig import keep_across_uid_change  # noqa: PLC0415 lazy

    restore_pdeathsig = keep_across_uid_change()  # `pymail run`'s, cleared by the uid change
    try:
        become_account(pw)
    except PrivilegeError as exc:
        return str(exc)
    restore_pdeathsig()
    return None


def serve(cfg: config.Config, sock) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT; the exit status."""
    try:
        server = make_server(cfg, sock)
    except autoconfig.AutoconfigError as exc:
        log.error(f"config: {exc}")
        return EX_CONFIG
    except Exception as exc:  # TLSConfigError, without importing ssl for the plain case
        log.error(f"paths.tls_cert: {exc}")
        return EX_CONFIG
    problem = drop_privileges(cfg)
    if problem:
        log.error(problem)
        return EX_CONFIG

    def stop(*_args) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = sock.getsockname()
    log.info(
        f"autoconfig for {server.answers.settings.hostname} on {'https' if server.tls else 'http'}://{where[0]}:{where[1]}"
    )
    with server:
        server.serve_forever(poll_interval=0.5)
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    try:
        options, operands = getopt(
            sys.argv[1:] if argv is None else argv, "C:h", ["config=", "listen=", "service=", "help"]
        )
        if operands:
            raise UsageError(f"unexpected argument {operands[0]!r}")
    except UsageError as exc:
        fail("autoconfig", USAGE, exc)
    opts = dict(options)
    if "-h" in opts or "--help" in opts:
        print(USAGE)
        return EX_OK
    log.set_program(opts.get("--service") or "autoconfig")
    cfg = config.load_logged(opts.get("-C") or opts.get("--config"))
    if cfg is None:
        return EX_CONFIG
    socks = activation.listen_fds()
    try:
        if socks:
            sock = socks[0]
        else:
            listen = opts.get("--listen") or cfg["listen.autoconfig"]
            if not listen:
                log.error("no --listen and listen.autoconfig is empty")
                return EX_CONFIG
            sock = activation.open_listener(*config.parse_listen(listen))
    except (OSError, ValueError) as exc:
        log.error(f"cannot listen: {exc}")
        return EX_OSERR
    return serve(cfg, sock)


if __name__ == "__main__":
    sys.exit(main())
