"""The skeleton every network daemon shares (smtpd, pop3d, imapd).

It reads the command line and the config, then picks the mode the way the
program was started:

1. ``--listen HOST:PORT``    -> asyncio server on sockets it opens itself;
2. ``LISTEN_FDS`` set for us -> asyncio server on systemd's sockets (Accept=no);
3. otherwise                 -> one session on fd 0/1 (inetd, Accept=yes),
                                blocking, without importing asyncio.

``build(cfg, service)`` returns a factory: a function of no arguments
returning a fresh protocol object for each connection.
"""

from __future__ import annotations

import os
import sys

from pymta.lib import log, sysexits


class Options:
    config: str | None = None
    tls: bool = False
    service: str | None = None

    def __init__(self) -> None:
        self.listen: list[str] = []


class ArgParser:
    """The daemons' command line, parsed by hand: argparse (and the gettext
    and locale it pulls in) would cost every inetd connection ~5 ms."""

    def __init__(self, prog: str, description: str, default_service: str) -> None:
        self.prog = prog
        self.usage = (
            f"usage: {prog} [-h] [-C FILE] [--listen HOST:PORT] [--tls] [--service NAME]\n\n"
            f"{description}\n\n"
            "options:\n"
            "  -h, --help          show this help message and exit\n"
            "  -C FILE             configuration file (default: $PYMAIL_CONFIG, then\n"
            "                      /etc/pymail/pymail.toml)\n"
            "  --listen HOST:PORT  listen on HOST:PORT (repeatable); without it, use\n"
            "                      systemd's LISTEN_FDS sockets, else serve the one\n"
            "                      connection on stdin/stdout (inetd)\n"
            "  --tls               implicit TLS: handshake before the greeting\n"
            "  --service NAME      listener name, which picks the policy (default:\n"
            f"                      {default_service})\n"
        )

    def error(self, message: str):
        sys.stderr.write(f"usage: {self.prog} [-h] [-C FILE] [--listen HOST:PORT] [--tls] [--service NAME]\n"
                         f"{self.prog}: error: {message}\n")
        raise SystemExit(sysexits.EX_USAGE)

    def parse_args(self, argv: list[str] | None = None) -> Options:
        argv = sys.argv[1:] if argv is None else list(argv)
        opts = Options()
        i = 0
        while i < len(argv):
            arg = argv[i]
            name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if arg in ("-h", "--help"):
                sys.stdout.write(self.usage)
                raise SystemExit(0)
            if name == "--tls" and not eq:
                opts.tls = True
            elif name in ("-C", "--listen", "--service") or (arg.startswith("-C") and len(arg) > 2):
                if arg.startswith("-C") and len(arg) > 2:
                    name, value = "-C", arg[2:]
                elif eq:
                    value = inline
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    self.error(f"argument {name}: expected one argument")
                if name == "-C":
                    opts.config = value
                elif name == "--listen":
                    opts.listen.append(value)
                else:
                    opts.service = value
            else:
                self.error(f"unrecognized arguments: {arg}")
            i += 1
        return opts


def arg_parser(prog: str, description: str, default_service: str) -> ArgParser:
    return ArgParser(prog, description, default_service)


def main(argv, *, prog: str, description: str, service: str, tls_service: str, build, busy_reply: bytes,
         section: str) -> int:
    """A daemon's whole ``main``: its command line, then ``run`` with the
    ``SECTION.max_sessions`` and ``SECTION.processes`` parameters."""
    args = arg_parser(prog, description, f"{service} ({tls_service} with --tls)").parse_args(argv)
    if args.service is None:
        args.service = tls_service if args.tls else service
    return run(prog, args, build, busy_reply=busy_reply, max_sessions_key=f"{section}.max_sessions",
               processes_key=f"{section}.processes")


def tls_loader(cfg):
    """A function returning the server SSLContext, or None when no cert is configured.

    The ``ssl`` module is imported only when the function is called.
    """
    cert, key = cfg.path_of("tls_cert"), cfg.path_of("tls_key")
    if not (os.path.exists(cert) and os.path.exists(key)):
        return None

    def load():
        from pymta.lib import tls

        try:
            return tls.server_context(cert, key)
        except tls.TLSConfigError as exc:
            log.error(f"TLS unavailable: {exc}")
            raise

    return load


def run(prog: str, args, build, *, busy_reply: bytes, max_sessions_key: str, processes_key: str | None = None) -> int:
    log.set_program(prog)
    from pymta.lib import config

    cfg = config.load_logged(args.config)
    if cfg is None:
        return sysexits.EX_CONFIG
    service = args.service
    tls = tls_loader(cfg)
    if args.tls and tls is None:
        log.error(f"--tls needs {cfg.path_of('tls_cert')} and {cfg.path_of('tls_key')}")
        return sysexits.EX_CONFIG
    factory = build(cfg, service)
    handshake_timeout = cfg["smtpd.tls_handshake_timeout"]

    sockets = []
    if args.listen:
        from pymta.lib.activation import open_listener

        for spec in args.listen:
            try:
                host, port = config.parse_listen(spec)
                sockets.append(open_listener(host, port))
            except (ValueError, OSError) as exc:
                log.error(f"cannot listen on {spec}: {exc}")
                return sysexits.EX_OSERR
    else:
        from pymta.lib.activation import listen_fds

        sockets = listen_fds()
    if sockets:
        from pymta.lib import driver_async

        if tls is not None:
            try:  # a long-running server finds a broken certificate now, not per connection
                tls()
            except Exception:
                if args.tls:
                    return sysexits.EX_CONFIG
                log.warning("STARTTLS disabled")
                tls = None

        where = ", ".join(_sockname(s) for s in sockets)
        processes = (cfg[processes_key] if processes_key else 1) or os.cpu_count() or 1
        log.info(f"listening on {where} ({service}{', implicit TLS' if args.tls else ''}, {processes} process(es))")

        def serve() -> None:
            try:
                driver_async.run(factory, sockets, service=service, tls=tls, implicit_tls=args.tls,
                                 handshake_timeout=handshake_timeout, max_sessions=cfg[max_sessions_key],
                                 busy_reply=busy_reply)
            except KeyboardInterrupt:
                pass

        # Pre-fork, as Postfix runs several smtpd processes: one asyncio loop
        # is one core, and the kernel spreads accepts over the processes.
        children = []
        for _ in range(processes - 1):
            pid = os.fork()
            if pid == 0:
                try:
                    serve()
                finally:
                    os._exit(0)
            children.append(pid)
        serve()
        _stop_children(children)
        log.info("stopped")
        return sysexits.EX_OK

    from pymta.lib import driver_blocking
    from pymta.lib.activation import inetd_socket

    sock = inetd_socket()
    if sock is not None:
        driver_blocking.serve_socket(sock, factory(), service=service, tls=tls, implicit_tls=args.tls,
                                     handshake_timeout=handshake_timeout)
    else:
        if args.tls:
            log.error("--tls needs a socket on stdin")
            return sysexits.EX_USAGE
        driver_blocking.serve_pipes(factory(), service=service)
    return sysexits.EX_OK


def _stop_children(children: list[int]) -> None:
    import signal
    import time

    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid in children:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done or time.time() > deadline:
                if not done:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def _sockname(sock) -> str:
    try:
        name = sock.getsockname()
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
    except OSError:
        return "?"
