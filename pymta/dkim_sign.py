"""DKIM signing (RFC 6376) of outbound mail from local domains, with dkimpy.

Keys live in ``dkim.key_dir`` as ``DOMAIN/SELECTOR.key`` (PEM, mode 0600),
made by ``pymail dkim keygen DOMAIN SELECTOR``, which prints the TXT record
to publish at ``SELECTOR._domainkey.DOMAIN``.  The runner signs a message
when ``dkim.selector`` is set, the envelope sender's domain is local and a
key for (domain, selector) exists; the signature header is put in front of
the message as it is sent (the queue file itself is never rewritten).
dkimpy is imported only when a message is really signed.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

from pymta.lib import log

# What we sign: the RFC 6376 5.4.1 list of headers that matter.
SIGNED_HEADERS = [
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
]
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class DKIMError(Exception):
    pass


def _check_name(domain: str, selector: str) -> None:
    if not domain or not all(_LABEL.match(p) for p in domain.rstrip(".").split(".")):
        raise DKIMError(f"{domain!r} is not a domain name")
    if not all(_LABEL.match(p) for p in selector.split(".")):
        raise DKIMError(f"{selector!r} is not a valid selector")


def key_dir(cfg) -> Path:
    d = Path(cfg["dkim.key_dir"])
    return d if d.is_absolute() else cfg.root / d


def key_path(cfg, domain: str, selector: str) -> Path:
    _check_name(domain, selector)
    return key_dir(cfg) / domain.lower().rstrip(".") / f"{selector}.key"


def keygen(cfg, domain: str, selector: str, bits: int = 2048) -> tuple[Path, str]:
    """Make a key pair; returns (key file, DNS TXT record text)."""
    path = key_path(cfg, domain, selector)
    if path.exists():
        raise DKIMError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = path.with_suffix(".tmp")
    old = os.umask(0o077)
    try:
        done = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", str(tmp)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DKIMError(f"openssl failed: {exc}") from None
    finally:
        os.umask(old)
    if done.returncode != 0:
        raise DKIMError(f"openssl failed: {done.stderr.strip()[-200:]}")
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    return path, dns_record(path, selector, domain)


def public_key_b64(path: Path) -> str:
    done = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"], capture_output=True, timeout=60
    )
    if done.returncode != 0:
        raise DKIMError(f"openssl cannot read {path}")
    return base64.b64encode(done.stdout).decode()


def dns_record(path: Path, selector: str, domain: str) -> str:
    key = public_key_b64(path)
    value = f"v=DKIM1; k=rsa; p={key}"
    # TXT strings are at most 255 octets: split for zone files
    chunks = " ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {chunks} )"


def sign(message_lf: bytes, domain: str, selector: str, key_pem: bytes) -> bytes:
    """The DKIM-Signature header field (LF line ends) for a message with LF line ends."""
    import dkim  # noqa: PLC0415 lazy

    crlf = message_lf.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    present = {
        line.split(b":", 1)[0].strip().lower()
        for line in crlf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if b":" in line and line[:1] not in (b" ", b"\t")
    }
    headers = [h for h in SIGNED_HEADERS if h in present] or [b"from"]
    sig = dkim.sign(
        crlf,
        selector.encode(),
        domain.encode(),
        key_pem,
        include_headers=headers,
        canonicalize=(b"relaxed", b"relaxed"),
    )
    return sig.replace(b"\r\n", b"\n")


def signature_for(cfg, sender: str, entry) -> bytes | None:
    """Sign ``entry`` when its sender's domain is local and has a key; None otherwise."""
    selector = cfg["dkim.selector"]
    domain = sender.rpartition("@")[2].lower()
    if not selector or not sender or not cfg.is_local_domain(domain):
        return None
    try:
        path = key_path(cfg, domain, selector)
        key = path.read_bytes()
    except (DKIMError, FileNotFoundError):
        return None
    except OSError as exc:
        log.warning(f"dkim: cannot read key for {domain}: {exc.strerror}", entry.envelope.queue_id)
        return None
    try:
        return sign(entry.read_message(), domain, selector, key)
    except Exception as exc:  # dkimpy raises several kinds; an unsigned message still goes out
        log.warning(f"dkim: signing failed for {domain}: {exc}", entry.envelope.queue_id)
        return None


def arc_seal_for(cfg, entry, rcpts, prefix: bytes = b"") -> bytes:
    """The ARC set (RFC 8617) to put on top of a forwarded message as it leaves, or b"".

    A message is forwarded when it carries the Authentication-Results field
    smtpd's checks put on it when it arrived (authserv-id ``hostname``): it came
    from outside and goes out again (aliases, .forward, rules' !).  The seal is
    made with the ``dkim.selector`` key of the domain it was forwarded from (a
    recipient's original address), else of the first local domain that has one;
    ``prefix`` (our DKIM-Signature, if any) is sealed with the message."""
    if not cfg["checks.arc_seal"] or not cfg["dkim.selector"]:
        return b""
    from pymta.lib import arc, authres  # noqa: PLC0415 lazy

    head = _head(entry)
    if not authres.claims(head, cfg["hostname"]):
        return b""
    selector = cfg["dkim.selector"]
    domains = [r.orig.rpartition("@")[2].lower() for r in rcpts if getattr(r, "orig", "")] + list(cfg.domains)
    for domain in dict.fromkeys(domains):
        if not cfg.is_local_domain(domain):
            continue
        try:
            key = key_path(cfg, domain, selector).read_bytes()
        except (DKIMError, OSError):
            continue
        try:
            return arc.seal(prefix + entry.read_message(), domain, selector, key, cfg["hostname"])
        except Exception as exc:  # dkimpy raises several kinds; an unsealed message still goes out
            log.warning(f"arc: sealing failed for {domain}: {exc}", entry.envelope.queue_id)
            return b""
    return b""


def _head(entry) -> bytes:
    """The header block of a queued message (LF line ends), read in chunks."""
    head = b""
    for chunk in entry.message_chunks():
        head += chunk
        end = head.find(b"\n\n")
        if end >= 0 or head.startswith(b"\n"):
            return head[: end + 1] if end >= 0 else b""
        if len(head) > 1 << 20:
            break
    return head
