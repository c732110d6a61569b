"""Which sender addresses a login owns (Postfix's reject_sender_login_mismatch).

One answer for every door: smtpd asks it for ``MAIL FROM`` and the
``From:`` header of an authenticated client, sendmail's maildrop pickup
for the ``-f`` address of a local user.

A login owns:

* its own address and its ``+extensions`` (``alice+lists@example.test``);
* every local address whose aliases lead to it (``postmaster: alice``
  lets alice write as postmaster);
* whatever its users-file entry allows: ``allow_any_sender=yes`` (list
  servers, a help desk) or ``allow_senders=a@x,@example.org`` (addresses,
  or ``@domain`` for a whole domain).

A login without ``@`` is a local Unix user (sendmail): it owns its name at
every local domain and at the host name.
"""

from __future__ import annotations

YES = ("yes", "y", "true", "1")
MAX_HEADER_BLOCK = 100 * 1024  # Postfix's header_size_limit: the From: we check must lie within


def sender_owned(cfg, login: str, address: str, *, users=None, aliases=None) -> bool:
    """May ``login`` use ``address`` as its sender?  The null sender is
    always allowed (bounces, vacation replies), as Postfix allows it."""
    if not address:
        return True
    address = address.lower()
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return False
    login = login.lower()
    if "@" in login and users is not None:
        record = users.lookup(login)
        if record is not None:
            login = record.address
            if _allowed_by_entry(record.fields, address, domain):
                return True
    if _is_login(cfg, users, login, address):
        return True
    if not cfg.is_local_domain(domain):
        return False
    if aliases is None:
        from pymta.aliases import Aliases  # noqa: PLC0415 lazy

        aliases = Aliases(cfg.path_of("aliases"))
    for _orig, target in aliases.expand(address, lambda a: cfg.is_local_domain(a.rpartition("@")[2])):
        if (
            target.kind == "address"
            and target.value.lower() != address
            and _is_login(cfg, users, login, target.value.lower())
        ):
            return True
    return False


def _allowed_by_entry(fields: dict, address: str, domain: str) -> bool:
    if fields.get("allow_any_sender", "").lower() in YES:
        return True
    for allowed in fields.get("allow_senders", "").lower().split(","):
        allowed = allowed.strip()
        if allowed and (allowed == address or allowed == "@" + domain):
            return True
    return False


def _is_login(cfg, users, login: str, address: str) -> bool:
    """Is ``address`` the login's own (its +extensions included)?"""
    local, _, domain = address.rpartition("@")
    if "@" not in login:  # a Unix user: NAME at a local domain or at this host
        base = local.split(cfg["deliver.recipient_delimiter"] or "+", 1)[0]
        return base == login and (cfg.is_local_domain(domain) or domain == cfg["hostname"].lower())
    if users is not None:
        record = users.lookup(address)
        return record is not None and record.address == login
    base = local.split(cfg["deliver.recipient_delimiter"] or "+", 1)[0]
    return f"{base}@{domain}" == login


def header_addresses(block: bytes, name: bytes = b"from") -> list[str] | None:
    """The addresses in the ``name`` fields of a header block (LF line ends);
    None when a field is there but holds no address we can read."""
    fields, current = [], None
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current += line
            continue
        if current is not None:
            fields.append(current)
        current = line if line.split(b":", 1)[0].strip().lower() == name else None
    if current is not None:
        fields.append(current)
    if not fields:
        return []
    from email.utils import getaddresses  # noqa: PLC0415 lazy

    values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields]
    found = [addr for _, addr in getaddresses(values)]
    if not found or not all("@" in a for a in found):
        return None
    return found


class HeaderCatcher:
    """Keeps the header block of a message streamed through it, bounded.

    ``feed`` the text as it passes (LF line ends); ``block`` is the header
    block once its empty line was seen, else None (still open, or larger
    than ``limit``: then ``too_large``)."""

    def __init__(self, limit: int = MAX_HEADER_BLOCK) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.block: bytes | None = None
        self.too_large = False

    def feed(self, data: bytes) -> None:
        if self.block is not None or self.too_large:
            return
        start = max(0, len(self._buf) - 1)
        self._buf += data[: self.limit + 2 - len(self._buf)]
        if self._buf.startswith(b"\n"):
            self.block = b""
            return
        end = self._buf.find(b"\n\n", start)
        if end >= 0:
            self.block = bytes(self._buf[: end + 1])
            self._buf = bytearray()
        elif len(self._buf) > self.limit:
            self.too_large = True
            self._buf = bytearray()

    def finish(self) -> None:
        """The message ended: a message with no body is all header."""
        if self.block is None and not self.too_large:
            self.block = bytes(self._buf)
            self._buf = bytearray()
