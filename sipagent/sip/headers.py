"""Structured header values (Via, CSeq) and generators for branches, tags and Call-IDs."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sipagent.errors import SipParseError
from sipagent.sip._text import format_params, is_token, parse_params
from sipagent.sip.uri import _parse_hostport

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 branch prefix: marks a globally unique branch
_VIA_RE = re.compile(r"\s*([^/\s]+)\s*/\s*([^/\s]+)\s*/\s*([^\s;]+)\s+([^;]+?)\s*(;.*)?\s*", re.DOTALL)
_CSEQ_RE = re.compile(r"\s*([0-9]{1,10})\s+(\S+)\s*")


@dataclass
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA_RE.fullmatch(text)
        if not m:
            raise SipParseError("bad Via header")
        name, version, transport, hostport, param_text = m.groups()
        if name.upper() != "SIP" or not is_token(version) or not is_token(transport):
            raise SipParseError("bad Via protocol")
        host, port = _parse_hostport(hostport.strip(), "Via")
        params = parse_params(param_text or "", what="Via")
        rport = params.get("rport")
        if rport is not None and not (rport.isascii() and rport.isdigit() and int(rport) <= 65535):
            raise SipParseError("bad Via rport")
        return cls(transport.upper(), host, port, params, f"{name.upper()}/{version}")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The filled-in rport value (RFC 3581); None when absent or requested but empty."""
        value = self.params.get("rport")
        return int(value) if value else None

    def response_address(self, source_host: str, source_port: int) -> tuple[str, int]:
        """Where responses go (RFC 3261 18.2.2 + RFC 3581): symmetric when rport was asked for."""
        if "rport" in self.params:
            return source_host, source_port
        host = self.received or self.host.strip("[]")
        return host, self.port or (5061 if self.transport == "TLS" else 5060)


CSEQ_OUT_OF_RANGE = "CSeq number out of range"  # RFC 3261 8.1.1.5: below 2**31


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        m = _CSEQ_RE.fullmatch(text)
        if not m or not is_token(m.group(2)):
            raise SipParseError("bad CSeq header")
        seq = int(m.group(1))
        if seq >= 2**31:
            raise SipParseError(CSEQ_OUT_OF_RANGE)
        return cls(seq, m.group(2))

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str = "") -> str:
    token = secrets.token_hex(12)
    return f"{token}@{host}" if host else token
