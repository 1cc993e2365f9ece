"""SIP URIs (RFC 3261 section 19.1) and name-addr values (From, To, Contact, Route...)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from sipagent.errors import SipParseError
from sipagent.sip._text import format_params, is_token, parse_params, quote, split_list

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?|[0-9.]+")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USER_BAD = re.compile(r"[\s<>\"]")


def _is_ipv6(text: str) -> bool:
    """An IPv6 address as RFC 3261's IPv6reference holds it: no zone id (``%eth0`` names an interface of the
    sender's host, nothing we could send to) and at most 45 characters. The character class alone let
    ``[1::2::3]`` or ``[...]`` through, to fail only when we came to send to it (a BYE that never left)."""
    if len(text) > 45:
        return False
    try:
        ipaddress.IPv6Address(text)  # also accepts "fe80::1%eth0": the character class has refused the "%"
    except ValueError:
        return False
    return True


def uri_host(host: str) -> str:
    """``host`` as a URI, or a log line a reader must not misread, writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(host: str, port: int) -> str:
    """``host:port``, ``[2001:db8::1]:5060`` for an IPv6 host (``::1:5060`` could be either)."""
    return f"{uri_host(host)}:{port}"


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"bad IPv6 reference in {what}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not _IPV6_RE.fullmatch(host) or not _is_ipv6(host[1:-1]):
            raise SipParseError(f"bad IPv6 reference in {what}")
    else:
        host, colon, port_text = text.partition(":")
        rest = ":" + port_text if colon else ""
        if not _HOSTNAME_RE.fullmatch(host):
            raise SipParseError(f"bad host in {what}")
    if not rest:
        return host, None
    port = rest[1:]
    if not rest.startswith(":") or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise SipParseError(f"bad port in {what}")
    return host, int(rest[1:])


@dataclass
class SipUri:
    """A ``sip:``/``sips:`` URI. Other schemes (``tel:``…) are kept opaque in ``user`` with an empty host."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME_RE.fullmatch(scheme):
            raise SipParseError("bad URI scheme")
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            if not rest or _USER_BAD.search(rest):
                raise SipParseError("bad URI")
            return cls(scheme=scheme, user=rest)
        hdr_text = ""
        if "?" in rest:
            rest, _, hdr_text = rest.partition("?")
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            if not userinfo or _USER_BAD.search(userinfo):
                raise SipParseError("bad user part in URI")
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
        hostport, _, param_text = rest.partition(";")
        host, port = _parse_hostport(hostport, "URI")
        params: dict[str, str | None] = {}
        for item in param_text.split(";") if param_text else []:
            name, eq, val = item.partition("=")
            if not name or _USER_BAD.search(item):
                raise SipParseError("bad URI parameter")
            params[name.lower()] = val if eq else None
        headers: dict[str, str] = {}
        for item in hdr_text.split("&") if hdr_text else []:
            name, _, val = item.partition("=")
            if not name:
                raise SipParseError("bad URI header")
            headers[name] = val
        return cls(scheme, user, password, host, port, params, headers)

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.user or ''}"
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += format_params(self.params)
        if self.headers:
            out += "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return out

    @property
    def host_port(self) -> tuple[str, int | None]:
        """Host without IPv6 brackets, and the explicit port if any."""
        return self.host.strip("[]"), self.port


@dataclass
class NameAddr:
    """``"Display" <uri>;params`` (From, To, Contact, Route, Refer-To...)."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
        if "<" in text or text.startswith('"'):
            if text.startswith('"'):
                end = _end_of_quoted(text)
                display = _unescape(text[1:end])
                text = text[end + 1 :].strip()
            lt = text.find("<")
            gt = text.find(">", lt + 1)
            if lt < 0 or gt < 0:
                raise SipParseError("unbalanced angle brackets in name-addr")
            if lt > 0:
                words = text[:lt].split()
                if display is not None or not all(is_token(w) for w in words):
                    raise SipParseError("bad display name")
                display = " ".join(words)
            uri = SipUri.parse(text[lt + 1 : gt])
            rest = text[gt + 1 :].strip()
        else:
            # addr-spec without brackets: everything after the first ';' is a header parameter.
            uri_text, semi, rest = text.partition(";")
            rest = semi + rest
            uri = SipUri.parse(uri_text)
        if rest and not rest.startswith(";"):
            raise SipParseError("garbage after URI in name-addr")
        return cls(uri, display, parse_params(rest, what="name-addr"))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        prefix = f"{quote(self.display)} " if self.display else ""
        return f"{prefix}<{self.uri}>{format_params(self.params)}"


def _end_of_quoted(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise SipParseError("unterminated quoted display name")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


_NOT_IN_URI = re.compile(r"[\x00-\x20<>\"\x7f]")


def parse_target_uri(text: str) -> SipUri:
    """A ``sip:``/``sips:`` URI to put inside ``<...>`` in a header we send (Refer-To): parsed, and with no
    character that could end the bracket, the header or the line. Raises SipParseError."""
    if _NOT_IN_URI.search(text):
        raise SipParseError("URI contains a space, control character, quote or angle bracket")
    uri = SipUri.parse(text)
    if uri.scheme not in ("sip", "sips") or not uri.host:
        raise SipParseError("not a sip: or sips: URI with a host")
    return uri


def parse_name_addr_list(value: str) -> list[NameAddr]:
    """Parse a comma-separated list of name-addrs (Route, Record-Route, Contact)."""
    return [NameAddr.parse(item) for item in split_list(value)]
