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
from typing import TYPE_CHECKING

from pymta.lib import log, metrics, sysexits
from pymta.lib.cliargs import UsageError, fail, getopt

if TYPE_CHECKING:
    from pymta.lib.tls import ServerTLS


class Options:
    config: str | None = None
    tls: bool = False
    service: str | None = None

    def __init__(self) -> None:
        self.listen: list[str] = []


class ArgParser:
    """The daemons' command line, with ``cliargs.getopt``: click or argparse
    (and the gettext and locale it pulls in) would cost every inetd
    connection 5-15 ms."""

    def __init__(self, prog: str, description: str, default_service: str) -> None:
        self.prog = prog
        self.usage = (
            f"usage: {prog} [-h] [-C FILE] [--listen HOST:PORT] [--tls] [--service NAME]\n\n"
            f"{description}\n\n"
            "options:\n"
            "  -h, --help          show this help message and exit\n"
            "  -C FILE             configuration file (default: $PYMAIL_CONFIG, then\n"
            "                      /etc/pymail/pymail.toml)\n"
            "  --listen HOST:PORT  listen on HOST:PORT, or on unix:PATH (repeatable);\n"
            "                      without it, use systemd's LISTEN_FDS sockets, else\n"
            "                      serve the one connection on stdin/stdout (inetd)\n"
            "  --tls               implicit TLS: handshake before the greeting\n"
            "  --service NAME      listener name, which picks the policy (default:\n"
            f"                      {default_service})\n"
        )

    def parse_args(self, argv: list[str] | None = None) -> Options:
        try:
            given, operands = getopt(
                sys.argv[1:] if argv is None else argv, "hC:", ["help", "listen=", "tls", "service="]
            )
            if operands:
                raise UsageError(f"unrecognized arguments: {' '.join(operands)}")
        except UsageError as exc:
            fail(self.prog, self.usage.split("\n", 1)[0], exc)
        opts = Options()
        for name, value in given:
            if name in ("-h", "--help"):
                sys.stdout.write(self.usage)
                raise SystemExit(0)
            if name == "-C":
                opts.config = value
            elif name == "--listen":
                opts.listen.append(value)
            elif name == "--tls":
                opts.tls = True
            else:
                opts.service = value
        return opts


def arg_parser(prog: str, description: str, default_service: str) -> ArgParser:
    return ArgParser(prog, description, default_service)


def main(
    argv,
    *,
    prog: str,
    description: str,
    service: str,
    tls_service: str,
    build,
    busy_reply: bytes,
    section: str,
    client_busy_reply: bytes = b"",
    preload: tuple[str, ...] = (),
    job_slots: int = 0,
) -> int:
    """A daemon's whole ``main``: its command line, then ``run`` with the
    ``SECTION.max_sessions`` and ``SECTION.processes`` parameters.
    ``client_busy_reply`` answers a client over its own limits
    (``SECTION.max_sessions_per_client``, ``SECTION.connection_rate_per_client``).
    ``preload``: the program's modules a session may import, loaded before
    the switch to daemon_user.  ``job_slots``: how many jobs of a listening
    process run Python at once (``jobslots``; 0: no limit)."""
    args = arg_parser(prog, description, f"{service} ({tls_service} with --tls)").parse_args(argv)
    if args.service is None:
        args.service = tls_service if args.tls else service
    return run(
        prog,
        args,
        build,
        busy_reply=busy_reply,
        max_sessions_key=f"{section}.max_sessions",
        processes_key=f"{section}.processes",
        client_busy_reply=client_busy_reply or busy_reply,
        preload_modules=preload,
        job_slots=job_slots,
    )


def per_connection(server_class, settings, backend, adjust):
    """A session factory for ``build()``: each connection's server gets
    ``adjust(settings, info)`` as its settings -- what depends on the peer,
    such as whether a password may cross without TLS."""

    # not smtp_server.Session: a server, not its state (the type: a base class given at run time)
    class PeerAdjusted(server_class):  # type: ignore[valid-type,misc]
        def connection_made(self, info):
            self.settings = adjust(settings, info)
            return super().connection_made(info)

    return lambda: PeerAdjusted(settings, backend)


class TLSLoader:
    """Calling it returns the server SSLContext (``ssl`` is imported only
    then); ``reload()`` takes a renewed certificate and key (SIGHUP)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._server: ServerTLS | None = None

    def __call__(self):
        from pymta.lib import tls  # noqa: PLC0415 lazy

        if self._server is None:
            self._server = tls.ServerTLS(self.cert, self.key)
        try:
            return self._server()
        except tls.TLSConfigError as exc:
            log.error(f"TLS unavailable: {exc}")
            raise

    def reload(self) -> None:
        """Take a renewed certificate now (outside the event loop), and log it."""
        self.apply(self.check())

    def check(self):
        """Step one, in a job thread: the renewed pair's stamp, or None (unchanged, or refused and logged)."""
        from pymta.lib import tls  # noqa: PLC0415 lazy

        if self._server is None:
            return None
        try:
            stamp = self._server.renewed()
        except tls.TLSConfigError as exc:
            log.error(f"TLS certificate not reloaded, the old one stays in use: {exc}")
            return None
        if stamp is None:
            log.info(f"TLS certificate unchanged: {self.cert}")
        return stamp

    def apply(self, stamp) -> None:
        """Step two, on the thread that makes the handshakes."""
        from pymta.lib import tls  # noqa: PLC0415 lazy

        if stamp is None or self._server is None:
            return
        try:
            self._server.take(stamp)
        except tls.TLSConfigError as exc:
            log.error(f"TLS certificate not reloaded: {exc}")
            return
        log.info(f"TLS certificate reloaded: {self.cert}")


def tls_loader(cfg) -> TLSLoader | None:
    """The daemon's TLS loader, or None when no certificate is configured."""
    cert, key = cfg.path_of("tls_cert"), cfg.path_of("tls_key")
    if not (os.path.exists(cert) and os.path.exists(key)):
        return None
    return TLSLoader(str(cert), str(key))


def run(
    prog: str,
    args,
    build,
    *,
    busy_reply: bytes,
    max_sessions_key: str,
    processes_key: str | None = None,
    client_busy_reply: bytes = b"",
    preload_modules: tuple[str, ...] = (),
    job_slots: int = 0,
) -> int:
    log.set_program(prog)
    from pymta.lib import config  # noqa: PLC0415 lazy

    cfg = config.load_logged(args.config)
    if cfg is None:
        return sysexits.EX_CONFIG
    metrics.setup(cfg.root)
    service = args.service
    tls = tls_loader(cfg)
    if args.tls and tls is None:
        log.error(f"--tls needs {cfg.path_of('tls_cert')} and {cfg.path_of('tls_key')}")
        return sysexits.EX_CONFIG
    factory = build(cfg, service)
    handshake_timeout = cfg["smtpd.tls_handshake_timeout"]
    switch = None
    if cfg["daemon_user"]:
        from pymta.lib.privilege import daemon_account  # noqa: PLC0415 lazy

        switch, problem = daemon_account(cfg["daemon_user"])
        if problem:
            log.error(problem)
            return sysexits.EX_CONFIG if switch is None else sysexits.EX_NOPERM
        if switch.pw_uid == os.geteuid():
            switch = None  # already that user (e.g. User= in the unit)

    sockets = []
    if args.listen:
        from pymta.lib.activation import open_listener  # noqa: PLC0415 lazy

        for spec in args.listen:
            try:
                if spec.startswith("unix:"):  # a UNIX socket, relative to root (lmtpd: lmtp:unix:... clients)
                    sockets.append(_unix_listener(cfg, spec[5:], max_sessions_key.partition(".")[0]))
                else:
                    host, port = config.parse_listen(spec)
                    sockets.append(open_listener(host, port))
            except (ValueError, OSError) as exc:
                log.error(f"cannot listen on {spec}: {exc}")
                return sysexits.EX_OSERR
    else:
        from pymta.lib.activation import listen_fds  # noqa: PLC0415 lazy

        sockets = listen_fds()
    if sockets:
        import signal  # noqa: PLC0415 lazy

        # The port is open: a SIGHUP (renewed certificate) from now on reloads,
        # here until the event loop takes it over (driver_async), never kills.
        loader = tls

        def reload_now(*_args) -> None:
            if loader is not None:
                loader.reload()

        signal.signal(signal.SIGHUP, reload_now)
        from pymta.lib import driver_async  # noqa: PLC0415 lazy

        # a long-running server finds a broken certificate now, not per connection
        from pymta.lib.pdeathsig import keep_across_uid_change  # noqa: PLC0415 lazy

        restore_pdeathsig = keep_across_uid_change()  # `pymail run`'s, cleared by the switch to daemon_user
        tls, failed = _ready_to_serve(tls, args.tls, switch, preload_modules)
        if failed:
            return failed
        restore_pdeathsig()

        where = ", ".join(_sockname(s) for s in sockets)
        processes = (cfg[processes_key] if processes_key else 1) or os.cpu_count() or 1
        log.info(f"listening on {where} ({service}{', implicit TLS' if args.tls else ''}, {processes} process(es))")
        from pymta.lib.cpusched import use_batch_policy  # noqa: PLC0415 lazy

        use_batch_policy(cfg)  # before the workers and their threads: they inherit it
        from pymta.lib import connlimit  # noqa: PLC0415 lazy

        # made before the fork: every worker, replacements included, shares the counts
        client_limits = connlimit.from_config(cfg, max_sessions_key.partition(".")[0], service, processes)

        def serve() -> None:
            signal.signal(signal.SIGHUP, reload_now)  # a forked worker's own, until its loop starts
            try:
                driver_async.run(
                    factory,
                    sockets,
                    service=service,
                    tls=tls,
                    implicit_tls=args.tls,
                    handshake_timeout=handshake_timeout,
                    max_sessions=cfg[max_sessions_key],
                    busy_reply=busy_reply,
                    client_limits=client_limits,
                    client_busy_reply=client_busy_reply or busy_reply,
                    job_slots=job_slots,
                )
            except KeyboardInterrupt:
                pass

        # Pre-fork, as Postfix runs several smtpd processes: one asyncio loop
        # is one core, and the kernel spreads accepts over the processes.  The
        # parent then only watches its workers: it replaces a dead one, and
        # its own death (even by SIGKILL) stops them all, freeing the port.
        if processes > 1:
            from pymta.lib.prefork import run_workers  # noqa: PLC0415 lazy

            run_workers(processes, lambda _slot: serve())
        else:
            serve()
        log.info("stopped")
        return sysexits.EX_OK

    from pymta.lib import driver_blocking  # noqa: PLC0415 lazy
    from pymta.lib.activation import inetd_socket  # noqa: PLC0415 lazy

    sock = inetd_socket()
    if switch is not None:  # the key may be readable only by root: read it before the switch
        tls, failed = _ready_to_serve(tls, args.tls, switch, preload_modules)
        if failed:
            return failed
    if sock is not None:
        from pymta.lib import inetdlimit  # noqa: PLC0415 lazy

        # counted after the switch to daemon_user: the files under ROOT/run are its own
        per_client = inetdlimit.from_config(cfg, max_sessions_key.partition(".")[0], service)
        if per_client is None or per_client.admit(driver_blocking.socket_info(sock, service).peer_ip):
            protocol = factory()
        else:  # the refusal goes out as a listening daemon's, after an implicit-TLS handshake
            protocol = inetdlimit.Refusal(client_busy_reply or busy_reply)
        try:
            driver_blocking.serve_socket(
                sock, protocol, service=service, tls=tls, implicit_tls=args.tls, handshake_timeout=handshake_timeout
            )
        finally:
            if per_client is not None:
                per_client.release()
    else:
        if args.tls:
            log.error("--tls needs a socket on stdin")
            return sysexits.EX_USAGE
        driver_blocking.serve_pipes(factory(), service=service)
    return sysexits.EX_OK


def _unix_listener(cfg, path: str, section: str):
    """``--listen unix:PATH``: PATH relative to root, mode SECTION.socket_mode (0666 without one)."""
    from pymta.lib.activation import open_unix_listener  # noqa: PLC0415 lazy

    if not path:
        raise ValueError("unix: needs a path")
    text = cfg.get(f"{section}.socket_mode") or "0666"
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"{section}.socket_mode {text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{section}.socket_mode {text!r} is not a mode")
    return open_unix_listener(str(cfg.root / path), mode)


def _ready_to_serve(tls, implicit_tls: bool, switch, preload_modules: tuple[str, ...]):
    """Load the TLS certificate and key now, then become ``switch`` (a pwd
    entry, or None to stay).  Returns (tls loader or None when STARTTLS is
    off, 0) or (None, the exit status) when the daemon cannot serve."""
    if tls is not None:
        try:
            tls()
        except Exception:
            if implicit_tls:
                return None, sysexits.EX_CONFIG
            log.warning("STARTTLS disabled")
            tls = None
    if switch is not None:
        tls = _switch_user(switch, tls, preload_modules)
        if tls is False:
            return None, sysexits.EX_NOPERM
    return tls, 0


# What every network daemon may import after the switch to daemon_user, when
# the interpreter's own files can be out of the new user's reach (a Python
# under /root).  Each program names its own modules (``preload=`` of main).
_COMMON_MODULES = (
    "pymta.lib.driver_async",
    "pymta.lib.driver_blocking",
    "pymta.lib.tls",
    "pymta.lib.authguard",
    "pymta.lib.users",
    "pymta.lib.log",
    "concurrent.futures.thread",
    "passlib.hash",
    "syslog",
)


def _imported_names(module) -> set[str]:
    """Every module name an ``import`` anywhere in ``module``'s source names."""
    import ast  # noqa: PLC0415 lazy
    import importlib.util  # noqa: PLC0415 lazy

    try:
        with open(module.__file__, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, TypeError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = (
                    importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
                    if node.level
                    else node.module
                )
            except (ImportError, ValueError):
                continue
            assert base is not None  # level 0: "from" always names a module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules among them
    return names


def preload(modules: tuple[str, ...], others: tuple[str, ...] = (), common: bool = True) -> None:
    """Import now what a process may need once it has left root: ``modules``
    (the program's own) and every module of their packages that they import
    anywhere (function-level imports included), ``others`` as they are, and
    with ``common`` what every network daemon needs."""
    import encodings  # noqa: PLC0415 lazy
    import importlib  # noqa: PLC0415 lazy
    import pkgutil  # noqa: PLC0415 lazy

    ours = {name.partition(".")[0] for name in modules} | {__name__.partition(".")[0]}
    todo = list((_COMMON_MODULES if common else ()) + tuple(others) + tuple(modules))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            module = importlib.import_module(name)
        except Exception:  # optional (argon2, syslog...) or not a module: the session copes as it would anyway
            continue
        if name.partition(".")[0] in ours:
            todo.extend(_imported_names(module) - seen)
    try:  # passlib loads its bcrypt backend on first use
        import passlib.hash  # noqa: PLC0415 optional

        passlib.hash.bcrypt.get_backend()
    except Exception:
        pass
    for mod in pkgutil.iter_modules(encodings.__path__):  # any charset a message may name
        try:
            importlib.import_module(f"encodings.{mod.name}")
        except Exception:
            pass


def _switch_user(pw, tls, preload_modules: tuple[str, ...]):
    """Become ``pw`` (uid, primary gid, supplementary groups) for good, as
    Postfix's master does for mail_owner.  The TLS context is loaded before
    (the key may be readable only by root) and kept.  Returns the TLS
    loader, or False when the switch failed (never serve as root by mistake)."""
    if tls is not None:
        tls()  # loaded now, kept by the loader; a reload after the switch needs a key daemon_user can read
    preload(preload_modules)
    from pymta.lib.privilege import PrivilegeError, become_account  # noqa: PLC0415 lazy

    try:
        become_account(pw)
    except PrivilegeError as exc:
        log.error(f"daemon_user = {pw.pw_name!r}: {exc}; refusing to run")
        return False
    log.debug(f"running as {pw.pw_name} (uid {pw.pw_uid}, gid {pw.pw_gid})")
    return tls


def _sockname(sock) -> str:
    try:
        name = sock.getsockname()
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
    except OSError:
        return "?"
