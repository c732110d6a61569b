"""RFC 5321 addresses: the grammar of ``MAIL FROM:``/``RCPT TO:`` paths.

Shared by smtpd, the queue and sendmail.  Address validation is security code
(OpenSMTPD CVE-2020-7247): whatever passes here ends up in envelope files and
in argv of delivery programs, so CR, LF, NUL, controls and anything outside
the RFC 5321 ``Mailbox`` grammar are refused.  Non-ASCII is allowed only when
the caller says SMTPUTF8 (RFC 6531) is in force.

Nothing is lower-cased: the local part is case-sensitive (RFC 5321 2.4) and
callers normalise domains with ``normalize_domain``.
"""

from __future__ import annotations


class AddressError(ValueError):
    """The text is not a valid path or mailbox; the message says why."""


# RFC 5322 atext (RFC 5321 4.1.2 Atom) and RFC 1035 letters-digits-hyphen.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")

MAX_LOCAL_PART = 64  # octets, RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # octets, RFC 5321 4.5.3.1.2
MAX_LABEL = 63  # octets, RFC 1035 2.3.4


def _utf8_char_ok(ch: str, smtputf8: bool) -> bool:
    # RFC 6531 adds UTF8-non-ascii to atext, qtext and sub-domain.  isprintable()
    # refuses C1 controls, surrogates (from surrogateescape), format and
    # separator characters such as U+2028 that could confuse later readers.
    return smtputf8 and ord(ch) > 127 and ch.isprintable()


def _check_dot_string(local: str, smtputf8: bool) -> None:
    if local[0] == "." or local[-1] == "." or ".." in local:
        raise AddressError("misplaced '.' in local part")
    for ch in local:
        if ch not in _ATEXT and ch != "." and not _utf8_char_ok(ch, smtputf8):
            raise AddressError(f"invalid character {ch!r} in local part")


def _check_quoted_string(local: str, smtputf8: bool) -> None:
    if len(local) < 2 or local[-1] != '"':
        raise AddressError("unterminated quoted local part")
    i, end = 1, len(local) - 1
    while i < end:
        ch = local[i]
        if ch == "\\":  # quoted-pairSMTP = "\" %d32-126
            i += 1
            if i >= end or not " " <= local[i] <= "~":
                raise AddressError("invalid quoted pair in local part")
        elif ch == '"':
            raise AddressError("stray '\"' in local part")
        elif not (" " <= ch <= "~" or _utf8_char_ok(ch, smtputf8)):
            raise AddressError(f"invalid character {ch!r} in quoted local part")
        i += 1


def _check_address_literal(literal: str) -> None:
    if not literal.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        text = inner[5:]
        if not text or "%" in text or not text.isascii():  # no zone ids on the wire
            raise AddressError("invalid IPv6 address literal")
        import ipaddress  # noqa: PLC0415 lazy: rare path: keep it off the start-up cost

        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise AddressError("invalid IPv6 address literal") from None
        return
    parts = inner.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        # General-address-literal tags other than IPv6 are not standardised.
        raise AddressError("invalid address literal")


def check_domain(domain: str, *, smtputf8: bool = False, literal: bool = True) -> None:
    """Raise AddressError unless ``domain`` is an RFC 5321 Domain (or address literal)."""
    if not domain:
        raise AddressError("empty domain")
    if domain[0] == "[":
        if not literal:
            raise AddressError("address literal not allowed here")
        _check_address_literal(domain)
        return
    if len(domain.encode("utf-8", "surrogatepass")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    for label in domain.split("."):
        if not label:
            raise AddressError("empty label in domain")
        if label[0] == "-" or label[-1] == "-":
            raise AddressError("domain label starts or ends with '-'")
        for ch in label:
            if ch not in _LDH and not _utf8_char_ok(ch, smtputf8):
                raise AddressError(f"invalid character {ch!r} in domain")
        # A U-label's limit applies to its A-label form, which we do not compute.
        if label.isascii() and len(label) > MAX_LABEL:
            raise AddressError("domain label too long")


def _unquote(quoted: str) -> str:
    """The content of a checked quoted string: quotes off, quoted-pairs undone."""
    out, escaped = [], False
    for ch in quoted[1:-1]:
        if ch == "\\" and not escaped:
            escaped = True
            continue
        out.append(ch)
        escaped = False
    return "".join(out)


def parse_mailbox(text: str, *, smtputf8: bool = False) -> str:
    """Validate ``local@domain`` (no angle brackets) and return it -- with a
    quoted local part that needs no quotes unquoted: ``"bob"@d`` is ``bob@d``
    (RFC 5321 4.1.2, RFC 5322 3.2.4: the quotes are not part of the content)."""
    if not isinstance(text, str):
        raise AddressError("address must be text")
    local, at, domain = text.rpartition("@")  # domains never contain '@'
    if not at or not local:
        raise AddressError("address must be local-part@domain")
    if local[0] == '"':
        _check_quoted_string(local, smtputf8)
        content = _unquote(local)
        try:
            _check_dot_string(content, smtputf8)
        except (AddressError, IndexError):
            pass  # needs its quotes ("john doe", "a@b", "")
        else:
            local, text = content, f"{content}@{domain}"
    else:
        _check_dot_string(local, smtputf8)
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    check_domain(domain, smtputf8=smtputf8)
    return text


def parse_path(text: str, *, allow_null: bool, smtputf8: bool = False) -> str:
    """Parse an RFC 5321 Path ``<local@domain>``; return the mailbox ("" for ``<>``).

    Angle brackets are required (RFC 5321 4.1.2).  A source route
    ``<@a,@b:user@c>`` is accepted and dropped (RFC 5321 4.1.2: MUST accept,
    MAY ignore).
    """
    if not isinstance(text, str) or len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError("address must be enclosed in <>")
    inner = text[1:-1]
    if not inner:
        if allow_null:
            return ""
        raise AddressError("null address not allowed here")
    if inner[0] == "@":
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
        for hop in route.split(","):
            if hop[:1] != "@":
                raise AddressError("invalid source route")
            check_domain(hop[1:], smtputf8=smtputf8, literal=False)
    return parse_mailbox(inner, smtputf8=smtputf8)


def split_path(text: str) -> tuple[str, str]:
    """Split ``<path> rest`` after the closing '>' (a quoted local part may hold '>')."""
    if not text.startswith("<"):
        raise AddressError("address must be enclosed in <>")
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ">":
            return text[: i + 1], text[i + 1 :]
    raise AddressError("missing '>'")


def split(address: str) -> tuple[str, str]:
    """(local, domain) split at the last '@'; domain is "" when there is none."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def normalize_domain(domain: str) -> str:
    """Lower-case and drop one trailing dot: the form used for comparisons."""
    domain = domain.lower()
    return domain[:-1] if domain.endswith(".") else domain


def is_safe_envelope_field(s: str | bytes) -> bool:
    """True when ``s`` cannot break a line-based envelope record (no CR, LF, NUL)."""
    if isinstance(s, (bytes, bytearray)):
        return b"\r" not in s and b"\n" not in s and b"\0" not in s
    return "\r" not in s and "\n" not in s and "\0" not in s


def valid_envelope_address(address: str, allow_null: bool = False) -> bool:
    """A command-line envelope address (sendmail, pymta-queue): ``local@domain``
    with no whitespace, angle brackets or controls; "" only when ``allow_null``."""
    if address == "":
        return allow_null
    if not is_safe_envelope_field(address) or any(c in "<>" or c.isspace() for c in address):
        return False
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and len(address) <= 320


def account_address(address: str) -> str:
    """``Local@Domain`` -> ``local@domain``: the address of an account, or AddressError.

    The address becomes a path (MAIL/<domain>/<local>/) and a line of a
    colon-separated file, so ':', '/', '\\', whitespace, control characters
    and dot tricks ('.', '..', leading/trailing dots) are refused.
    """
    if not isinstance(address, str):
        raise AddressError(f"{address!r} is not an address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in local:
        raise AddressError(f"{address!r} is not local@domain")
    if len(address) > 254 or len(local) > 64:
        raise AddressError(f"{address!r} is too long")
    for part in (local, domain):
        if any(c in ':/\\"' or c.isspace() or not c.isprintable() for c in part):
            raise AddressError(f"{address!r} contains a character not allowed in an address")
        if part.startswith(".") or part.endswith(".") or ".." in part:
            raise AddressError(f"{address!r}: misplaced '.'")
    if local.startswith("#"):
        raise AddressError(f"{address!r} would read as a comment")  # passwd-file syntax
    return f"{local.lower()}@{domain.lower()}"


def origin_domain(cfg) -> str:
    """The domain locally submitted mail and bare user names get (Postfix's
    ``myorigin``): the first local domain, else the host name."""
    return cfg.domains[0] if cfg.domains else cfg["hostname"]


def qualify(cfg, address: str) -> str:
    """``user`` -> ``user@<origin_domain>``; an address with a domain is kept."""
    if "@" in address:
        return address
    return f"{address}@{origin_domain(cfg)}"
