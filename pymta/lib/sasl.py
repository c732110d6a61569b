"""SASL PLAIN and LOGIN responses (RFC 4616, RFC 4954, RFC 5034, RFC 3501):
one decoder for SMTP, POP3 and IMAP.

A client response is a base64 line, ``*`` to cancel, or -- for an initial
response sent with the command (SMTP AUTH, POP3 AUTH, IMAP SASL-IR) -- ``=``
for an empty one.  PLAIN carries ``authzid NUL authcid NUL password``;
pymail lets no user act as another, so an authzid other than the authcid
is refused.  Each protocol turns the errors into its own reply.
"""

from __future__ import annotations

import binascii


class SaslError(ValueError):
    """A response that cannot be used; ``kind`` says which reply to give:
    ``cancelled`` (the client sent ``*``), ``base64``, ``malformed``
    (not three NUL-separated fields, or an empty name or password) or
    ``authzid`` (an authorization identity other than the user)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_response(line: bytes, initial: bool = False) -> bytes:
    """The bytes of one client response line (CRLF already removed)."""
    line = line.strip(b" ")
    if line == b"*":
        raise SaslError("cancelled", "authentication cancelled")
    if line == b"=" and initial:  # RFC 4954 4, RFC 5034 4, RFC 4959: an empty initial response
        return b""
    if not line:
        return b""
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SaslError("base64", "invalid base64") from None


def split_plain(data: bytes) -> tuple[bytes, bytes]:
    """(authcid, password) of a PLAIN message."""
    parts = data.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SaslError("malformed", "invalid PLAIN response")
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        raise SaslError("authzid", "authorization identity not allowed")
    return authcid, password
