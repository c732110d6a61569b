"""TLS contexts for the daemons and the SMTP client, and a self-signed pair for `pymail init`.

Contexts are cached in-process per (paths, mtimes).  A long-running daemon
serves with one ``ServerTLS`` context, renewed in place on SIGHUP
(``ServerTLS.reload``), so that implicit-TLS listeners, which hold the
context object, take the new certificate too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path


class TLSConfigError(Exception):
    """The certificate or key cannot be used (message names the file)."""


_server_cache: dict[tuple[str, str], tuple[tuple[int, int], ssl.SSLContext]] = {}
_client_cache: dict[bool, ssl.SSLContext] = {}


def _no_passphrase() -> bytes:
    # an encrypted key would make OpenSSL prompt on the terminal; a daemon must fail instead
    raise TLSConfigError("private key is encrypted (pymail needs an unencrypted key file)")


def server_context(cert_path: str | os.PathLike, key_path: str | os.PathLike) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) for this certificate chain and key."""
    cert, key = str(cert_path), str(key_path)
    try:
        mtimes = (os.stat(cert).st_mtime_ns, os.stat(key).st_mtime_ns)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{exc.filename}: no such file") from None
    except OSError as exc:
        raise TLSConfigError(f"{exc.filename}: {exc.strerror}") from None
    cached = _server_cache.get((cert, key))
    if cached and cached[0] == mtimes:
        return cached[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE  # CRIME; our cipher order
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # client renegotiation is a DoS lever
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except TLSConfigError as exc:
        raise TLSConfigError(f"{key}: {exc}") from None
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{cert}, {key}: cannot load certificate and key: {exc.reason or exc}") from None
    except OSError as exc:
        raise TLSConfigError(f"{exc.filename or cert}: {exc.strerror or exc}") from None
    _server_cache[(cert, key)] = (mtimes, ctx)
    return ctx


class ServerTLS:
    """The server context of a long-running daemon, renewable in place.

    Calling it returns the one context this daemon serves with (made at the
    first call); the listening sockets of implicit TLS hold that object.
    ``reload()`` (on SIGHUP) checks the files at ``cert``/``key`` in a fresh
    context first, then loads them into the same object: the next handshake
    uses the new certificate, sessions already running keep theirs, and a
    broken or unreadable renewal changes nothing (TLSConfigError)."""

    def __init__(self, cert: str | os.PathLike, key: str | os.PathLike) -> None:
        self.cert, self.key = str(cert), str(key)
        self._context: ssl.SSLContext | None = None
        self._mtimes: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            return os.stat(self.cert).st_mtime_ns, os.stat(self.key).st_mtime_ns
        except OSError:
            return None

    def __call__(self) -> ssl.SSLContext:
        if self._context is None:
            mtimes = self._stat()
            self._context = server_context(self.cert, self.key)
            _server_cache.pop((self.cert, self.key), None)  # this object is ours alone: never renewed under another
            self._mtimes = mtimes
        return self._context

    def renewed(self) -> tuple[int, int] | None:
        """The files' stamp when they changed since the load and hold a good pair,
        None when unchanged; TLSConfigError for a pair that does not load.
        Reads files (a job thread's work); the live context is not touched."""
        if self._context is None:
            return None  # not loaded yet: the first use reads the files
        mtimes = self._stat()
        if mtimes is not None and mtimes == self._mtimes:
            return None
        server_context(self.cert, self.key)  # a bad pair is refused here, before the live context is touched
        _server_cache.pop((self.cert, self.key), None)
        return mtimes

    def take(self, mtimes: tuple[int, int] | None) -> None:
        """Load the renewed pair into the live context.  On the thread that
        makes the handshakes (the event loop): OpenSSL does not change a
        context while another thread makes connections from it."""
        assert self._context is not None
        try:
            self._context.load_cert_chain(self.cert, self.key, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:  # changed again since renewed() looked
            raise TLSConfigError(f"{self.cert}, {self.key}: {exc}") from None
        self._mtimes = mtimes

    def reload(self) -> bool:
        """Both steps at once; False when the files did not change."""
        mtimes = self.renewed()
        if mtimes is None:
            return False
        self.take(mtimes)
        return True


def client_context(verify: bool) -> ssl.SSLContext:
    """A client context; ``verify=False`` is opportunistic TLS (MX to MX), which is encrypted but unauthenticated."""
    ctx = _client_cache.get(verify)
    if ctx is not None:
        return ctx
    if verify:
        ctx = ssl.create_default_context()  # system CAs, hostname checked
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    _client_cache[verify] = ctx
    return ctx


_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._:-]{0,252})")


def make_self_signed(
    cert_path: str | os.PathLike, key_path: str | os.PathLike, hostname: str, days: int = 3650
) -> None:
    """Write a self-signed RSA certificate for ``hostname`` (key mode 0600) with the openssl command."""
    # the name goes into -subj and -addext, where '/', ',' and '=' have meaning
    if not _HOSTNAME.fullmatch(hostname or ""):
        raise TLSConfigError(f"{hostname!r} is not a host name")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSConfigError("the openssl command is not installed")
    try:
        ipaddress.ip_address(hostname)
        san = f"IP:{hostname}"
    except ValueError:
        san = f"DNS:{hostname}"
    cert, key = Path(cert_path), Path(key_path)
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tls-", dir=key.parent))  # mode 0700: the key is never readable by others
    try:
        tmp_key, tmp_cert = work / "key.pem", work / "cert.pem"
        cmd = [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(tmp_key),
            "-out",
            str(tmp_cert),
        ]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TLSConfigError(f"openssl failed: {exc}") from None
        if done.returncode != 0 or not tmp_key.exists() or not tmp_cert.exists():
            lines = (done.stderr or "").strip().splitlines()
            raise TLSConfigError(f"openssl failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
        os.chmod(tmp_key, 0o600)
        os.chmod(tmp_cert, 0o644)
        os.replace(tmp_key, key)
        try:
            os.replace(tmp_cert, cert)
        except OSError:  # cert on another file system than the key
            shutil.move(str(tmp_cert), str(cert))
    finally:
        shutil.rmtree(work, ignore_errors=True)
