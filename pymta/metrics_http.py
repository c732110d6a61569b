"""The metrics listener: ``GET /metrics`` answers pymta/metrics.py's exposition.

Off unless ``listen.metrics`` is set (``pymail run`` then starts it), or run
by hand::

    python3 -m pymta.metrics_http -C FILE [--listen HOST:PORT] [--service NAME]

(a socket passed by systemd, LISTEN_FDS, is used instead of --listen).  It is
the autoconfig listener's server (pymta/autoconfig_http.py: threads, bounded
at once, timeouts, daemon_user) with other answers: each scrape reads the
counters, lists the queue and reads /proc then.  Keep it on loopback
(``127.0.0.1:9154``) or behind a firewall: the numbers say who uses the
server and how much.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pymta import autoconfig_http, metrics
from pymta.lib import activation, config, log
from pymta.lib.cliargs import UsageError, fail, getopt
from pymta.lib.sysexits import EX_CONFIG, EX_OK, EX_OSERR

USAGE = "usage: python3 -m pymta.metrics_http [-C FILE] [--listen HOST:PORT] [--service NAME]"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATHS = ("/metrics", "/")


class Answers:
    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def get(self, path: str, query) -> tuple[int, str, bytes]:
        if path not in PATHS:
            return 404, "text/plain", b"not found\n"
        try:
            return 200, CONTENT_TYPE, metrics.render(self.cfg).encode("utf-8")
        except Exception as exc:  # a scrape that fails says so, and the listener goes on
            log.warning(f"scrape failed: {type(exc).__name__}: {exc}")
            return 500, "text/plain", b"scrape failed\n"

    def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        return 405, "text/plain", b"method not allowed\n"


class Handler(autoconfig_http.Handler):
    server_version = "pymail-metrics"

    def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        if code != 200:  # a scrape every 15 s is no news
            super().log_request(code, size)


def serve(cfg: config.Config, sock) -> int:
    server = autoconfig_http.Server(sock, Answers(cfg))  # type: ignore[arg-type]
    server.RequestHandlerClass = Handler
    problem = autoconfig_http.drop_privileges(cfg)
    if problem:
        log.error(problem)
        return EX_CONFIG

    def stop(*_args) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = sock.getsockname()
    log.info(f"metrics on http://{where[0]}:{where[1]}/metrics")
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
        fail("metrics", USAGE, exc)
    opts = dict(options)
    if "-h" in opts or "--help" in opts:
        print(USAGE)
        return EX_OK
    log.set_program(opts.get("--service") or "metrics")
    cfg = config.load_logged(opts.get("-C") or opts.get("--config"))
    if cfg is None:
        return EX_CONFIG
    socks = activation.listen_fds()
    try:
        if socks:
            sock = socks[0]
        else:
            listen = opts.get("--listen") or cfg["listen.metrics"]
            if not listen:
                log.error("no --listen and listen.metrics is empty")
                return EX_CONFIG
            sock = activation.open_listener(*config.parse_listen(listen))
    except (OSError, ValueError) as exc:
        log.error(f"cannot listen: {exc}")
        return EX_OSERR
    os.umask(0o077)
    return serve(cfg, sock)


if __name__ == "__main__":
    sys.exit(main())
