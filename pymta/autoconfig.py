"""Client autoconfiguration: what a mail client needs to set itself up from an address.

Three formats, all built from one ``Settings`` (the advertised host name and
ports, ``autoconfig.*`` in the config, not the ``listen.*`` bind addresses):

* Thunderbird's autoconfig (clientConfig v1.1), fetched as
  ``/.well-known/autoconfig/mail/config-v1.1.xml`` from the address's domain
  or ``/mail/config-v1.1.xml`` from ``autoconfig.DOMAIN``;
* Outlook's autodiscover "POX" answer to a POST of an ``EMailAddress`` to
  ``/autodiscover/autodiscover.xml`` (responseschema 2006a);
* an Apple configuration profile (``.mobileconfig``, a plist with one
  ``com.apple.mail.managed`` payload).

The user name is always the whole address (the users file is keyed by it).
``write_static`` writes the files for an existing web server; the listener
is pymta/autoconfig_http.py.  Nothing here reads a secret.
"""

from __future__ import annotations

import os
import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

from pymta.lib import config

THUNDERBIRD_PATHS = ("mail/config-v1.1.xml", ".well-known/autoconfig/mail/config-v1.1.xml")
AUTODISCOVER_PATH = "autodiscover/autodiscover.xml"
MOBILECONFIG_PATH = "email.mobileconfig"

AUTODISCOVER_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

# An address as clients send it: no spaces, no control or markup characters.
_ADDRESS = re.compile(r"[^\s@<>\"\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class AutoconfigError(Exception):
    """The configuration cannot describe a server (the message names the key)."""


class Server(NamedTuple):
    protocol: str  # imap, pop3, smtp
    port: int
    tls: str  # SSL (implicit TLS) or STARTTLS


class Settings(NamedTuple):
    hostname: str
    domains: tuple[str, ...]
    incoming: tuple[Server, ...]  # most preferred first
    outgoing: tuple[Server, ...]


# config key -> (protocol, socket type); the order is the order of preference (RFC 8314: implicit TLS first)
PORT_KEYS = (
    ("autoconfig.imaps_port", "imap", "SSL"),
    ("autoconfig.imap_port", "imap", "STARTTLS"),
    ("autoconfig.pop3s_port", "pop3", "SSL"),
    ("autoconfig.pop3_port", "pop3", "STARTTLS"),
    ("autoconfig.smtps_port", "smtp", "SSL"),
    ("autoconfig.submission_port", "smtp", "STARTTLS"),
)


def settings(cfg: config.Config) -> Settings:
    """The advertised servers, or AutoconfigError."""
    hostname = (cfg.get("autoconfig.hostname") or cfg["hostname"]).strip().rstrip(".").lower()
    if not hostname or not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", hostname):
        raise AutoconfigError(f"autoconfig.hostname: {hostname!r} is not a host name")
    servers = []
    for key, protocol, tls in PORT_KEYS:
        port = cfg.get(key, 0)
        if port > 65535:
            raise AutoconfigError(f"{key}: {port} is not a port")
        if port:
            servers.append(Server(protocol, port, tls))
    incoming = tuple(s for s in servers if s.protocol != "smtp")
    outgoing = tuple(s for s in servers if s.protocol == "smtp")
    if not incoming:
        raise AutoconfigError("autoconfig: no IMAP or POP3 port to advertise (autoconfig.imaps_port ...)")
    if not outgoing:
        raise AutoconfigError("autoconfig: no submission port to advertise (autoconfig.smtps_port ...)")
    domains = tuple(d.lower().rstrip(".") for d in cfg.domains) or (hostname,)
    return Settings(hostname, domains, incoming, outgoing)


def valid_address(address: str | None) -> str | None:
    """The address, with its domain lowercased, or None when it is not one."""
    if not address or not _ADDRESS.fullmatch(address):
        return None
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode() + b"\n"


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = str(text)
    return element


# -- Thunderbird ------------------------------------------------------------------------


def thunderbird(s: Settings) -> bytes:
    """clientConfig v1.1, the same for every address (the client puts its address in %EMAILADDRESS%)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=s.domains[0])
    for domain in s.domains:
        _sub(provider, "domain", domain)
    _sub(provider, "displayName", f"{s.domains[0]} mail")
    _sub(provider, "displayShortName", s.domains[0])
    for tag, servers in (("incomingServer", s.incoming), ("outgoingServer", s.outgoing)):
        for server in servers:
            element = _sub(provider, tag, type=server.protocol)
            _sub(element, "hostname", s.hostname)
            _sub(element, "port", server.port)
            _sub(element, "socketType", server.tls)
            _sub(element, "username", "%EMAILADDRESS%")
            _sub(element, "authentication", "password-cleartext")
    return _xml(root)


# -- Outlook ----------------------------------------------------------------------------


class BadRequest(Exception):
    """An autodiscover request that is not one."""


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of an autodiscover POX request, or BadRequest."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("DTDs are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadRequest(f"not XML: {exc}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress":
            address = valid_address((element.text or "").strip())
            if address is None:
                raise BadRequest("EMailAddress is not an address")
            return address
    raise BadRequest("no EMailAddress")


def autodiscover(s: Settings, address: str | None) -> bytes:
    """The POX response (Outlook's IMAP/POP3/SMTP "email" account); without an
    address (a static file) LoginName is left out and Outlook uses the address."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = _sub(root, "Response", xmlns=AUTODISCOVER_OUTLOOK_NS)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for server in s.incoming + s.outgoing:
        protocol = _sub(account, "Protocol")
        _sub(protocol, "Type", server.protocol.upper())
        _sub(protocol, "Server", s.hostname)
        _sub(protocol, "Port", server.port)
        _sub(protocol, "DomainRequired", "off")
        if address:
            _sub(protocol, "LoginName", address)
        _sub(protocol, "SPA", "off")
        if server.tls == "SSL":
            _sub(protocol, "SSL", "on")
        else:
            _sub(protocol, "SSL", "off")
            _sub(protocol, "Encryption", "TLS")
        _sub(protocol, "AuthRequired", "on")
        if server.protocol == "smtp":
            _sub(protocol, "UsePOPAuth", "off")
            _sub(protocol, "SMTPLast", "off")
    return _xml(root)


# -- Apple ------------------------------------------------------------------------------


def mobileconfig(s: Settings, address: str | None) -> bytes:
    """An unsigned configuration profile with one mail account.  Without an
    address the device asks for it (and uses it as the user name)."""
    incoming, outgoing = s.incoming[0], s.outgoing[0]
    seed = f"pymail:{s.hostname}:{address or ''}"
    reverse = ".".join(reversed(s.hostname.split(".")))
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.pymail.mail",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, seed + ":account")).upper(),
        "PayloadDisplayName": f"{s.domains[0]} mail",
        "EmailAccountDescription": address or f"{s.domains[0]} mail",
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "IncomingMailServerHostName": s.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": s.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if address:
        account.update(EmailAddress=address, IncomingMailServerUsername=address, OutgoingMailServerUsername=address)
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.pymail",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, seed)).upper(),
        "PayloadDisplayName": f"{s.domains[0]} mail",
        "PayloadDescription": f"Mail account on {s.hostname}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# -- static files -----------------------------------------------------------------------


def static_files(s: Settings) -> dict[str, bytes]:
    """Relative path -> content, for a web server's document root."""
    files = dict.fromkeys(THUNDERBIRD_PATHS, thunderbird(s))
    files[AUTODISCOVER_PATH] = autodiscover(s, None)
    files[MOBILECONFIG_PATH] = mobileconfig(s, None)
    return files


def write_static(s: Settings, out: Path) -> list[Path]:
    """Write ``static_files`` under ``out`` (each file replaced whole, mode 0644); the paths written."""
    written = []
    for name, content in static_files(s).items():
        path = out / name
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(path)
    return written
