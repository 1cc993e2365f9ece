"""The YAML configuration: loaded, interpolated from the environment and validated into typed objects.

Every error names the file, the line, the dotted key path and what was expected, e.g.
``agent.yaml:7: sip.expires: expected an integer, got "soon"``. Values of secret keys are never
echoed back.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import ssl
import types
import typing
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml

from sipagent.bridge import context as templates
from sipagent.bridge.call_events import EVENT_HEADERS
from sipagent.bridge.digits import DTMF_KEYS, FIRST_DIGIT_TIMEOUT_S, INTER_DIGIT_TIMEOUT_S, MAX_DIGITS, TERMINATORS
from sipagent.bridge.hold_audio import load_hold_wav
from sipagent.bridge.routing import Route, Router, pattern_matches
from sipagent.bridge.settings import (
    BUILTIN_TOOLS,
    CALL_EVENT_TYPES,
    DEFAULT_PROFILE,
    TRANSFER_MODES,
    AgentConfig,
    AgentProfile,
    AnsweringMachineConfig,
    BargeInConfig,
    DtmfConfig,
    EventsConfig,
    EventWebhookConfig,
    RecordingConfig,
    ToolConfig,
)
from sipagent.bridge.tools import CONTEXT_KEY
from sipagent.bridge.webhook import RequestRefused, prepare
from sipagent.errors import ConfigError, SipParseError
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.sdp.crypto import DEFAULT_SUITES, SUITES
from sipagent.sip.admission import parse_network
from sipagent.sip.identity import MAX_HEADERS as MAX_CONTEXT_HEADERS
from sipagent.sip.tls import TlsSettings, TlsSetupError, client_context, server_context
from sipagent.sip.uri import parse_target_uri

__all__ = ["AccountConfig", "AgentConfig", "AgentProfile", "Config", "ConfigError", "RecordingConfig", "Route",
           "ToolConfig", "load_config"]

SECRET_KEYS = frozenset({"password", "api_key", "secret", "token"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # in a value that goes into a header or a URL as it is
# recording.keep_days: at least a day (a file is judged by its last write: a call under way must never look
# old), at most a century.
MAX_KEEP_DAYS = 36600
MAX_SHUTDOWN_GRACE_S = 3600  # a stop that waits longer for calls is a stop that never comes (systemd kills it)
MIN_EVENT_SECRET = 16  # characters: an HMAC key a receiver can trust is not a short word
CODECS = ("PCMU", "PCMA", "G722")

# Ceilings of keys that had only a floor: past them a value is a typo (36000000 for 3600), never what a
# deployment needs, and it would be taken silently. Each says why it is where it is (docs/configuration.md).
DAY_S = 86400
# sip.expires, accounts[].expires: RFC 3261 allows up to 2**32-1, but registrars grant far less (Asterisk's
# maximum_expiration: 7200); a day is generous, and the registration core holds no binding longer anyway
# (sipagent.sip.registration.RegistrationConfig.max_expires: a 423 asking for more is refused).
MAX_EXPIRES = DAY_S
# sip.session_expires, sip.min_se: RFC 4028 suggests 1800 s; a call the PBX forgot (lost BYE) lives this long.
MAX_SESSION_EXPIRES = DAY_S
# sip.max_calls: one process is one core, about 300 calls (docs/benchmarks.md, docs/scaling.md); 2000 leaves
# room for faster cores while their sockets (about 5 per call) stay far inside the unit's LimitNOFILE (65536).
MAX_CALLS = 2000
# sip.limits.transactions(_per_source): each lives up to 32 s, so 100000 is over 3000 new requests a second
# sustained, more than one process parses; it is a shedding limit, and a huge one sheds nothing.
MAX_TRANSACTIONS = 100_000
# sip.limits.tcp_connections(_per_source): each is a file descriptor; 10000 with the calls' sockets still fits
# LimitNOFILE (65536), where running out would also fail the calls' RTP sockets.
MAX_TCP_CONNECTIONS = 10_000
# sip.limits.tcp_idle_s: an accepted connection silent for a day is gone, and holds a slot of tcp_connections.
MAX_TCP_IDLE_S = DAY_S
# sip.limits.tcp_message_s: also the TLS handshake's deadline; a whole message (at most 64 KiB) takes
# milliseconds, and a minute already lets a slow-loris client hold its connection that long.
MAX_TCP_MESSAGE_S = 60
# media.rtp_timeout_s: a far end silent for a day is gone (0 turns the watchdog off; hold does not count).
MAX_RTP_TIMEOUT_S = DAY_S
# realtime.max_session_s: providers end a session after 60 min (OpenAI GA) or less; a day is 24 times that.
MAX_SESSION_S = DAY_S
# agent.max_call_s, agent.idle_timeout_s: no phone call is meant to last a day (0 turns either off).
MAX_CALL_S = DAY_S
MAX_IDLE_TIMEOUT_S = DAY_S
# agent.barge_in.protect_greeting_ms: a minute is longer than any greeting (the whole of it is then protected).
MAX_PROTECT_GREETING_MS = 60_000


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class SipLimitsConfig:
    """What one source, or all of them together, may make the agent hold (see docs/security.md)."""

    max_message_bytes: int = 32768
    transactions: int = 2048
    transactions_per_source: int = 512
    tcp_connections: int = 256
    tcp_connections_per_source: int = 16
    tcp_idle_s: float = 300.0
    tcp_message_s: float = 10.0


@dataclass
class AccountConfig:
    """One more extension registered from this process (``sip.accounts``), besides ``sip.username``."""

    username: str = ""
    password: str = ""
    name: str = ""  # how logs, metrics and routes name it; the username when not set
    auth_user: str = ""  # the digest user name, when the PBX's differs from the extension
    expires: int = 0  # 0: sip.expires
    agent: str = ""  # the profile its calls land on, unless a route says otherwise; "": the routes decide


@dataclass
class TlsConfig:
    """``sip.tls``: used with ``sip.transport: tls`` (see docs/security.md#sip-over-tls)."""

    ca_file: str = ""
    verify: bool = True
    server_name: str = ""
    cert_file: str = ""
    key_file: str = ""
    sips: bool = False

    @property
    def settings(self) -> TlsSettings:
        return TlsSettings(ca_file=self.ca_file, verify=self.verify, server_name=self.server_name,
                           cert_file=self.cert_file, key_file=self.key_file, sips=self.sips)


@dataclass
class SipConfig:
    registrar: str = ""
    # Where the calls the agent places go first ("host[:port]"), when not to the registrar.
    outbound_proxy: str = ""
    transport: Literal["udp", "tcp", "tls"] = "udp"
    username: str = ""
    password: str = ""
    domain: str = ""
    listen: str = "0.0.0.0:5060"
    public_address: str = ""
    expires: int = 300
    max_calls: int = 20
    trusted_hosts: list[str] = field(default_factory=list)
    allow_any_caller: bool = False
    aliases: list[str] = field(default_factory=list)
    user_agent: str = "sipagent"
    limits: SipLimitsConfig = field(default_factory=SipLimitsConfig)
    # RFC 4028 session timers: the interval we ask for / accept, and the smallest we accept (422 below it).
    session_expires: int = 1800
    min_se: int = 90
    accounts: list[AccountConfig] = field(default_factory=list)
    tls: TlsConfig = field(default_factory=TlsConfig)
    # RFC 5626 CRLF keep-alive of the TCP/TLS connections the agent opens (0: off), and the pong's deadline.
    keepalive_s: float = 90.0
    keepalive_timeout_s: float = 10.0

    @property
    def default_port(self) -> int:
        return 5061 if self.transport == "tls" else 5060

    @property
    def direct_mode(self) -> bool:
        return not self.registrar

    @property
    def listen_address(self) -> HostPort:
        return parse_host_port(self.listen, default_port=self.default_port)

    @property
    def registrar_address(self) -> HostPort | None:
        return parse_host_port(self.registrar, default_port=self.default_port) if self.registrar else None

    @property
    def effective_domain(self) -> str:
        if self.domain:
            return self.domain
        registrar = self.registrar_address
        return registrar.host if registrar else self.listen_address.host


@dataclass
class MediaConfig:
    rtp_ports: str = "40000-40999"
    codecs: list[str] = field(default_factory=lambda: ["G722", "PCMU", "PCMA"])
    jitter_ms: int = 60
    symmetric_rtp: bool = True
    rtp_timeout_s: float = 30.0  # no media for this long (not on hold): the call is ended and counted
    # SRTP keyed by SDES (RFC 4568): off (plain RTP only), optional (SRTP when offered) or required.
    srtp: Literal["off", "optional", "required"] = "off"
    srtp_suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))
    # SDES keys travel in the SDP: taken only from offers that came over TLS, unless this says otherwise.
    srtp_over_insecure_signalling: bool = False

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        low, _, high = self.rtp_ports.partition("-")
        return int(low), int(high)

    @property
    def rtp_port_pairs(self) -> int:
        """How many calls the range holds at once: an even RTP port and its RTCP port + 1 each."""
        low, high = self.rtp_port_range
        return max(0, (high - (low + low % 2) + 1) // 2)


@dataclass
class RealtimeConfig:
    provider: Literal["openai", "azure", "local"] = "openai"
    url: str = ""
    model: str = "gpt-realtime"
    api_key: str = ""
    api_version: str = "2025-04-01-preview"
    dialect: Literal["ga", "beta"] = "ga"
    voice: str = "alloy"
    instructions: str = "You are a helpful, concise phone agent."
    turn_detection: dict[str, Any] = field(
        default_factory=lambda: {"type": "server_vad", "silence_duration_ms": 500}
    )
    transcription_model: str = "gpt-4o-mini-transcribe"
    audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] = "pcm16"
    connect_timeout_s: float = 10.0
    max_session_s: int = 3300
    local: dict[str, Any] = field(default_factory=dict)


METRICS_PORT = 9100
CONTROL_PORT = 9101
DEFAULT_OUTBOUND_CALLS = 4
CONTROL_TOKEN_ENV = "SIPAGENT_CONTROL_TOKEN"
MIN_CONTROL_TOKEN = 16  # characters: a bearer token that guards dialing out is not a short word


@dataclass
class MetricsConfig:
    listen: str = ""

    @property
    def listen_address(self) -> HostPort | None:
        return parse_host_port(self.listen, default_port=METRICS_PORT) if self.listen else None


@dataclass
class OutboundConfig:
    """``outbound``: calls the agent places (``sipagent call``, the control API) and what bounds a campaign."""

    # Outbound calls at once (dialing, ringing or answered); they count in sip.max_calls too. 0 (unset) is
    # DEFAULT_OUTBOUND_CALLS, or sip.max_calls when that is lower (Config.outbound_max_calls).
    max_calls: int = 0
    calls_per_second: float = 1.0  # new dials per second, on average (a token bucket of max_calls)
    ring_timeout_s: float = 30.0  # unanswered this long: CANCEL, outcome no-answer
    account: str = ""  # the sip.accounts name that dials (its credentials answer 401/407); "": the first
    profile: str = ""  # the agent profile of a call that names none; "": default


@dataclass
class ControlConfig:
    """``control``: the HTTP API that places and ends outbound calls (docs/outbound.md). Off unless ``listen``
    is set; then ``token`` (or $SIPAGENT_CONTROL_TOKEN) is required."""

    listen: str = ""  # "9101" or ":9101" listen on loopback; another host must be written out
    token: str = ""
    max_body_bytes: int = 16384
    history: int = 1000  # finished calls GET still answers for (the oldest are forgotten first)

    def __repr__(self) -> str:  # never let the token reach a log line
        return f"ControlConfig(listen={self.listen!r}, token=***, max_body_bytes={self.max_body_bytes})"

    @property
    def listen_address(self) -> HostPort | None:
        return control_address(self.listen) if self.listen else None


def control_address(text: str) -> HostPort:
    """``control.listen`` as host and port: a port alone (``9101``, ``:9101``) is on loopback (127.0.0.1), a
    host alone on CONTROL_PORT. Raises ValueError."""
    text = text.strip()
    port_only = text[1:] if text.startswith(":") else text
    if port_only.isascii() and port_only.isdigit():  # ASCII only: str.isdigit() also accepts "٥" and "²"
        return parse_host_port(f"127.0.0.1:{port_only}", default_port=CONTROL_PORT)
    return parse_host_port(text, default_port=CONTROL_PORT)


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


@dataclass
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass
class ContextConfig:
    """Per-call context: the INVITE headers to keep, the zone of {now}, and defaults for absent values."""

    headers: list[str] = field(default_factory=list)
    timezone: str = ""  # an IANA name; "" = the host's local zone (TZ, /etc/localtime), as `date` shows it
    defaults: dict[str, str] = field(default_factory=dict)  # variable name (e.g. caller_name) -> text

    @property
    def zone(self) -> tzinfo | None:
        """The configured zone (validated at load); None for the host's local zone."""
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else None

    @property
    def template_defaults(self) -> dict[str, str]:
        """``defaults`` keyed as the templates look values up (header names in lower case)."""
        return {templates.variable_key(str(name)): "" if value is None else str(value)
                for name, value in self.defaults.items()}


# Every key of a profile whose text is a template of the call's context (see sipagent/bridge/context.py); the
# default profile's instructions are realtime.instructions.
PROFILE_TEMPLATE_KEYS = ("instructions", "greeting", "idle_prompt", "goodbye", "max_call_message",
                         "on_failure.message", "answering_machine.message")
TEMPLATE_KEYS = ("realtime.instructions", *(f"agent.{key}" for key in PROFILE_TEMPLATE_KEYS[1:]))


@dataclass
class Config:
    sip: SipConfig = field(default_factory=SipConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    # Named profiles, inheritance from the default applied (see _resolve_profiles); set by the loader.
    agents: dict[str, AgentProfile] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = field(default="", compare=False)
    # The YAML document it was loaded from (None: built in code), kept so that a problem found after loading
    # (a warning of `sipagent check` or of the start) is named at its line, as a load error is (key_problem).
    document: yaml.Node | None = field(default=None, compare=False, repr=False)

    def key_problem(self, key: str, message: str) -> ConfigError:
        """A problem with the key at dotted path ``key``, named as the loader names an error:
        ``file:line: key: message``, the line found as the loader finds it (the key's, else its nearest
        ancestor's in the file)."""
        return _Ctx(self.source, {}).error(_node_for(self.document, key), key, message)

    def _srtp(self) -> str:
        media = self.media
        if media.srtp == "off":
            return "off"
        keys = "keys over any signalling" if media.srtp_over_insecure_signalling else "keys over TLS only"
        return f"{media.srtp} ({', '.join(media.srtp_suites)}; {keys})"

    def summary(self) -> str:
        """A short human summary for ``sipagent check`` (no secrets)."""
        sip = self.sip
        users = ", ".join(f"{account.username}@{sip.effective_domain}" for account in self.accounts())
        mode = f"registering {users} at {sip.registrar}" if sip.registrar else "direct mode (no registrar)"
        rt = self.realtime
        backend = ("in-process local backend" if rt.provider == "local" and not rt.url
                   else _url_shown(rt.url) if rt.url else rt.provider)
        lines = [
            f"config:    {self.source}",
            f"sip:       {mode}, {sip.transport} on {sip.listen}, up to {sip.max_calls} calls",
            *([f"tls:       {self._tls()}"] if sip.transport == "tls" else []),
            f"media:     codecs {', '.join(self.media.codecs)}, RTP {self.media.rtp_ports}, "
            f"jitter {self.media.jitter_ms} ms, SRTP {self._srtp()}",
            f"realtime:  {rt.provider} ({rt.dialect}, {rt.model}) via {backend}, audio {rt.audio_format}, "
            f"api key {'set' if rt.api_key else 'not set'}",
            f"agent:     {len(self.agent.tools)} tools, barge-in {self.agent.barge_in.mode}, "
            f"transfer to {self._transfers()}",
            *self.routing_table(),
            f"events:    {self._events()}",
            f"outbound:  {self._outbound()}",
            f"context:   headers {', '.join(self.context.headers) or '(none)'}, time zone "
            f"{self.context.timezone or 'of the host'}",
        ]
        return "\n".join(lines)

    def _tls(self) -> str:
        tls = self.sip.tls
        registrar = self.sip.registrar_address
        name = tls.server_name or (registrar.host if registrar else "the PBX")
        check = (f"verifying {name} against {tls.ca_file or 'the system CAs'}" if tls.verify
                 else "NOT verifying the PBX's certificate (sip.tls.verify: false)")
        serve = f"listening with {tls.cert_file}" if tls.cert_file else "not listening (no sip.tls.cert_file)"
        return f"{check}; {serve}{', sips: URIs' if tls.sips else ''}"

    def _events(self) -> str:
        hook = self.events.webhook
        if hook is None:
            return "off"
        parts = urlsplit(hook.url)  # scheme and host only: a path or query may carry a token
        return f"{', '.join(hook.events)} to {parts.scheme}://{parts.netloc}, signed, up to {hook.retries} retries"


    def _outbound(self) -> str:
        out = self.outbound
        account = out.account or next((a.name for a in self.accounts()), "") or "(direct)"
        address = self.control.listen_address
        control = "control API off"
        if address is not None:
            exposed = "" if is_loopback(address.host) else " (NOT loopback: put TLS and a firewall in front)"
            control = f"control API on http://{address}/v1/calls{exposed}"
        return (f"up to {self.outbound_max_calls} calls at {out.calls_per_second:g}/s, ring {out.ring_timeout_s:g} s, "
                f"account {account}, profile {out.profile or DEFAULT_PROFILE}; {control}")

    @property
    def outbound_max_calls(self) -> int:
        """``outbound.max_calls``, or its default: DEFAULT_OUTBOUND_CALLS within sip.max_calls."""
        return self.outbound.max_calls or min(DEFAULT_OUTBOUND_CALLS, self.sip.max_calls)

    def outbound_account(self) -> AccountConfig | None:
        """The account outbound calls are dialed from (None: direct mode, nothing registers)."""
        accounts = self.accounts()
        if self.outbound.account:
            return next((a for a in accounts if a.name == self.outbound.account), None)
        return accounts[0] if accounts else None

    def default_profile(self) -> AgentProfile:
        """The ``agent:`` section with ``realtime.instructions`` and ``realtime.voice``: profile "default"."""
        values = {f.name: getattr(self.agent, f.name) for f in dataclasses.fields(AgentConfig)}
        return AgentProfile(**values, name=DEFAULT_PROFILE, instructions=self.realtime.instructions,
                            voice=self.realtime.voice)

    def profiles(self) -> dict[str, AgentProfile]:
        """Every profile by name, the default first."""
        return {DEFAULT_PROFILE: self.default_profile(), **self.agents}

    def accounts(self) -> list[AccountConfig]:
        """Every registered extension: ``sip.username`` (when registering) first, then ``sip.accounts``."""
        sip = self.sip
        primary = [AccountConfig(username=sip.username, password=sip.password, name=sip.username,
                                 expires=sip.expires)] if sip.registrar and sip.username else []
        return primary + [dataclasses.replace(account, name=account.name or account.username)
                          for account in sip.accounts]

    def our_users(self) -> list[str]:
        """The Request-URI user parts the agent answers (the UA's admission); empty: any."""
        sip = self.sip
        users = ([sip.username] if sip.username else []) + [account.username for account in sip.accounts]
        return list(dict.fromkeys(users + list(sip.aliases)))

    def router(self) -> Router:
        """The routes in order; a last route without conditions is the default (else profile "default")."""
        routes = list(self.routes)
        default = routes.pop().agent if routes and not routes[-1].conditions else DEFAULT_PROFILE
        accounts = {account.name: account.agent for account in self.accounts() if account.agent}
        return Router(routes, default, accounts)

    def routing_table(self) -> list[str]:
        """Profiles, routes in the order they are tried, and accounts, for ``sipagent check`` (no secrets)."""
        lines = ["profiles:"]
        for name, profile in self.profiles().items():
            inherited = "" if name == DEFAULT_PROFILE else ", unset keys from default"
            tools = ", ".join(tool.name for tool in profile.tools) or "none"
            targets = ", ".join(name + (" (warm)" if profile.transfer.mode_of(name) == "warm" else "")
                                for name in profile.transfer_targets) or "none"
            language = f", language {profile.language}" if profile.language else ""
            lines.append(f"  {name}: voice {profile.voice}, tools {tools}, transfer targets {targets}, "
                         f"barge-in {profile.barge_in.mode}{language}{inherited}")
        lines.append("routes (first match wins):")
        lines += [f"  {line}" for line in self.router().describe()]
        accounts = self.accounts()
        if accounts:
            lines.append("accounts:")
            for account in accounts:
                auth = f", auth user {account.auth_user}" if account.auth_user else ""
                lines.append(f"  {account.name}: {account.username}@{self.sip.effective_domain}{auth}, "
                             f"expires {account.expires or self.sip.expires} s, "
                             f"profile {account.agent or '(by the routes)'}")
        return lines

    def _transfers(self) -> str:
        agent = self.agent
        def warm(name: str) -> str:
            return ", warm" if agent.transfer.mode_of(name) == "warm" else ""

        named = [f"{name} = {uri}{' (warm)' if warm(name) else ''}" for name, uri in agent.transfer_targets.items()]
        default = [f"{agent.transfer_target} (default{warm('default')})"] if agent.transfer_target else []
        return "; ".join(default + named) or "(none)"


def rtp_port_shortage(config: Config) -> ConfigError | None:
    """A warning when media.rtp_ports holds fewer calls than sip.max_calls lets in: the calls past it are
    refused with 503 "no free RTP port" while the agent seems to have room (a warm transfer's call to the
    human takes a pair too)."""
    pairs, calls = config.media.rtp_port_pairs, config.sip.max_calls
    if pairs >= calls:
        return None
    return config.key_problem("media.rtp_ports", f"{config.media.rtp_ports} holds {pairs} calls at once (2 ports "
                              f"each), fewer than sip.max_calls ({calls}): calls past {pairs} will be refused with "
                              f"503; widen it to at least {2 * calls} ports (more with warm transfers)")


def _url_shown(url: str) -> str:
    """A configured URL as ``sipagent check`` and errors show it: without credentials, query or fragment (an
    Azure ``api-key`` or a token may be in the query)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return url.partition("?")[0].rpartition("@")[2][:MAX_SHOWN]
    shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url.partition("?")[0]
    return shown + ("?..." if parts.query else "")


def parse_host_port(text: str, default_port: int) -> HostPort:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    port = default_port
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    return HostPort(host, port)


# --------------------------------------------------------------------------------------------------
# Loading

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Ctx:
    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        # key path -> the variable a ``${VAR}`` in its value named that is set but empty (a secret that came
        # out empty is named by its variable, not by a "required" that the file seems to satisfy)
        self.empty_vars: dict[str, str] = {}

    def error(self, node: yaml.Node | None, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(_printable(message), path=self.path, line=line, key=_printable(key))


MAX_SHOWN = 80  # characters of a value an error message quotes
_LONG_QUOTED = re.compile(r'got "([^"]{81,})"')  # MAX_SHOWN + 1
MAX_MESSAGE = 1000  # characters of a whole message (the longest a file can cause is a list of known keys)


def _printable(text: str) -> str:
    """An error message as it may reach a terminal or a log: control characters (an escape sequence, a line
    break that would forge a second line) written as escapes, and a quoted value cut to MAX_SHOWN characters
    (a megabyte-long value is not repeated whole)."""
    def cut(match: re.Match[str]) -> str:
        return f'got "{match.group(1)[:MAX_SHOWN]}..."'

    text = _LONG_QUOTED.sub(cut, text)
    if len(text) > MAX_MESSAGE:  # a long value quoted another way
        text = text[:MAX_MESSAGE] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError naming file, line and key."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=name) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=name) from None
    config = load_config_text(text, name, env)
    return config


def load_config_text(text: str, name: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    ctx = _Ctx(name, os.environ if env is None else env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem}", path=name, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=name) from None
    except RecursionError:  # the composer recurses once per level: thousands of "[" exhaust the stack
        raise ConfigError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep", path=name) from None
    if root is not None:
        _check_document(ctx, root)
    config = Config() if root is None else _convert_dataclass(ctx, root, Config, "")
    config.source = name
    config.document = root
    config.agents = _resolve_profiles(ctx, root, config)
    _check_semantics(ctx, root, config)
    return config


# Bounds of the document as the loader walks it, every alias expanded: a real file has a few thousand values
# and a dozen levels. Above them is a mistake or an attack (aliases of aliases: "billion laughs").
MAX_VALUES = 100_000
MAX_DEPTH = 64


def _check_document(ctx: _Ctx, root: yaml.Node) -> None:
    """What every later step may take for granted: no alias loop, a bounded size and depth with aliases
    expanded, text keys, and no key twice in one mapping (YAML would silently keep the last). Iterative:
    a hostile depth cannot exhaust the stack here."""
    values = 0
    open_nodes: set[int] = set()  # the mappings and lists on the path from the root to the node at hand
    stack: list[tuple[yaml.Node, str, int, bool]] = [(root, "", 0, False)]
    while stack:
        node, path, depth, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            continue
        where = path or "(top level)"
        values += 1
        if values > MAX_VALUES:
            raise ctx.error(node, where, f"the file expands to more than {MAX_VALUES} values (aliases of aliases?)")
        if depth > MAX_DEPTH:
            raise ctx.error(node, where, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in open_nodes:
            raise ctx.error(node, where, "a YAML alias refers to a value that contains it (an endless loop)")
        open_nodes.add(id(node))
        stack.append((node, path, depth, True))  # popped after the children: leaves the path then
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        else:
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ctx.error(key_node, where, f"expected a name as key, got {_describe(key_node, path)}")
                name = str(key_node.value)
                child = f"{path}.{name}" if path else name
                if name in seen:
                    raise ctx.error(key_node, child, "duplicate profile name" if path == "agents" else "duplicate key")
                seen.add(name)
                children.append((value_node, child))
        stack.extend((child, child_path, depth + 1, False) for child, child_path in reversed(children))


def _hint_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _node_for(root: yaml.Node | None, dotted: str) -> yaml.Node | None:
    node = root
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            if index >= len(node.value):
                return node
            node = node.value[index]
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    node = value_node
                    break
            else:
                return node
        else:
            return node
    return node


# Set by the loader, never read from the file.
_LOADER_FIELDS = frozenset({"source", "document"})


def _convert_dataclass(ctx: _Ctx, node: yaml.Node, cls: type[Any], key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, key or "(top level)", f"expected a mapping, got {_describe(node, key)}")
    hints = _hint_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _LOADER_FIELDS}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value)
        path = f"{key}.{name}" if key else name
        if cls is Config and name == "agents":
            continue  # profiles inherit from the agent section: _resolve_profiles reads them once it is known
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ctx.error(key_node, path, f"unknown key (expected one of: {known})")
        if name in values:
            raise ctx.error(key_node, path, "duplicate key")
        values[name] = _convert(ctx, value_node, hints[name], path)
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            path = f"{key}.{name}" if key else name
            raise ctx.error(node, path, "required key is missing")
    return cls(**values)


# Sections of a profile that inherit key by key from the default's; every other key is taken whole (a
# profile's tools or transfer_targets replace the default's: the model sees the chosen profile's only).
_MERGED_SECTIONS = frozenset({"barge_in", "on_failure", "dtmf", "answering_machine", "transfer"})


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                found: yaml.Node = value_node
                return found
    return None


def _inherit(base: yaml.Node | None, own: yaml.MappingNode) -> yaml.MappingNode:
    """``own`` with every key it does not set taken from ``base`` (a mapping node, or None). Nodes keep
    their marks, so an error in an inherited value still names the line it was written on."""
    if not isinstance(base, yaml.MappingNode):
        return own
    own_keys = {str(key_node.value) for key_node, _ in own.value}
    merged = [(k, v) for k, v in base.value if str(k.value) not in own_keys]
    for key_node, value_node in own.value:
        inherited = _child(base, str(key_node.value))
        if str(key_node.value) in _MERGED_SECTIONS and isinstance(value_node, yaml.MappingNode):
            value_node = _inherit(inherited, value_node)
        merged.append((key_node, value_node))
    return yaml.MappingNode(own.tag, merged, own.start_mark, own.end_mark)


def _resolve_profiles(ctx: _Ctx, root: yaml.Node | None, config: Config) -> dict[str, AgentProfile]:
    """``agents:``: each named profile is the ``agent:`` section overridden by the profile's own keys;
    ``instructions`` and ``voice`` default to ``realtime.instructions`` and ``realtime.voice``."""
    node = _child(root, "agents")
    if node is None or _is_null(node):
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, "agents", f"expected a mapping of profile names to profiles, got {_describe(node, '')}")
    profiles: dict[str, AgentProfile] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value)
        key = f"agents.{name}"
        if name == DEFAULT_PROFILE:
            raise ctx.error(key_node, key, f'"{DEFAULT_PROFILE}" is the profile of the agent: section; '
                                           "choose another name")
        if not _PROFILE_NAME.fullmatch(name):
            raise ctx.error(key_node, key, "expected a profile name of letters, digits, _ or - starting with a "
                                           "letter (at most 40)")
        if name in profiles:
            raise ctx.error(key_node, key, "duplicate profile name")
        if _is_null(value_node):
            value_node = yaml.MappingNode("tag:yaml.org,2002:map", [], value_node.start_mark, value_node.end_mark)
        if not isinstance(value_node, yaml.MappingNode):
            raise ctx.error(value_node, key, f"expected a mapping, got {_describe(value_node, key)}")
        own = {str(k.value) for k, _ in value_node.value}
        if "name" in own:
            raise ctx.error(value_node, f"{key}.name", "the profile's name is its key under agents:")
        profile = _convert_dataclass(ctx, _inherit(_child(root, "agent"), value_node), AgentProfile, key)
        profile.name = name
        if "instructions" not in own:
            profile.instructions = config.realtime.instructions
        if "voice" not in own:
            profile.voice = config.realtime.voice
        profiles[name] = profile
    return profiles


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _convert(ctx: _Ctx, node: yaml.Node, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _convert_dataclass(ctx, node, hint, key)
    if origin in (Union, types.UnionType):
        if _is_null(node) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(ctx, node, inner[0], key)
    if origin is list:
        if _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, key, f"expected a list, got {_describe(node, key)}")
        return [_convert(ctx, item, args[0], f"{key}[{i}]") for i, item in enumerate(node.value)]
    if origin is dict:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise ctx.error(node, key, f"expected a mapping, got {_describe(node, key)}")
        return _plain(ctx, node, key)
    if origin is Literal:
        value = _scalar_text(ctx, node, key)
        choices = [str(a) for a in args]
        if value not in choices:
            raise ctx.error(node, key, f"expected one of {', '.join(choices)}, got {_quote(value, key)}")
        return value
    if hint is str:
        return _scalar_text(ctx, node, key)
    if hint is bool:
        text = _scalar_text(ctx, node, key).lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ctx.error(node, key, f"expected true or false, got {_quote(text, key)}")
    if hint is int:
        text = _scalar_text(ctx, node, key)
        try:
            if _INTEGER.fullmatch(text.strip()):
                return int(text)
        except ValueError:  # more than 4300 digits
            pass
        raise ctx.error(node, key, f"expected an integer, got {_quote(text, key)}")
    if hint is float:
        text = _scalar_text(ctx, node, key)
        # Never NaN or infinity (not even by overflow, "1e400"): NaN compares false with every bound, so it
        # would pass each range check, and a timer of NaN or infinity fires at once or never.
        number = float(text) if _NUMBER.fullmatch(text.strip()) else math.nan
        if not math.isfinite(number):
            raise ctx.error(node, key, f"expected a finite number, got {_quote(text, key)}")
        return number
    if hint is Any:
        return _plain(ctx, node, key)
    raise TypeError(f"config schema has an unsupported type at {key}: {hint!r}")


# ASCII digits only: int() and float() also take "1_000" and other scripts' digits ("٥٠" is 50).
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _scalar_text(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, key, f"expected a single value, got {_describe(node, key)}")
    if _is_null(node):
        return ""
    return _interpolate(ctx, node, str(node.value), key)


def _interpolate(ctx: _Ctx, node: yaml.Node, text: str, key: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = ctx.env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                if _is_secret(key):  # a default would be the secret written into the file
                    raise ctx.error(node, key, f"environment variable {name} is not set (set it where the agent "
                                               "runs, e.g. in the service's EnvironmentFile: docs/deploy.md)")
                raise ctx.error(node, key, f"environment variable {name} is not set (use ${{{name}:-default}})")
            return default
        if value == "":
            ctx.empty_vars[key] = name
        return value

    return _VAR.sub(replace, text)


def _plain(ctx: _Ctx, node: yaml.Node, key: str) -> Any:
    """Free-form data (turn_detection, tool parameters, local brain): plain Python with typed scalars."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            out[name] = _plain(ctx, value_node, f"{key}.{name}")
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(ctx, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if "${" in str(node.value):
        value = _interpolate(ctx, node, str(node.value), key)
        # An interpolated plain scalar is typed by what it became: "${PORT:-5}" is the integer 5.
        tag = _RESOLVER.resolve(yaml.ScalarNode, value, (node.style is None, False))  # type: ignore[no-untyped-call]
        node = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
    try:
        data = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, LookupError, AttributeError, OverflowError):  # "!!int nope"
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ctx.error(node, key, f"cannot read {_quote(str(node.value), key)} as YAML tag {tag}") from None
    if isinstance(data, float) and not math.isfinite(data):  # passed on as JSON, where NaN is no number
        raise ctx.error(node, key, f"expected a finite number, got {_quote(str(node.value), key)}")
    if not isinstance(data, str | int | float | None):  # a date, bytes: no JSON type, so the text as written
        return str(node.value)
    return data


_RESOLVER = yaml.resolver.Resolver()


def _is_secret(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in SECRET_KEYS


def _number(value: float) -> str:
    """A number as an error quotes it: as written (36000000, 0.001), not as :g would (3.6e+07)."""
    return f"{value:.15g}"


def _quote(value: str, key: str) -> str:
    return "(hidden)" if _is_secret(key) else f'"{value}"'


def _describe(node: yaml.Node, key: str) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _quote(str(node.value), key)


def _check_semantics(ctx: _Ctx, root: yaml.Node | None, config: Config) -> None:
    """Cross-field and format checks that a type alone does not express."""

    def fail(dotted: str, message: str) -> ConfigError:
        return ctx.error(_node_for(root, dotted), dotted, message)

    sip, media, rt = config.sip, config.media, config.realtime
    for dotted, value, allow_empty in (
        ("sip.listen", sip.listen, False),
        ("sip.registrar", sip.registrar, True),
        ("sip.outbound_proxy", sip.outbound_proxy, True),
        ("metrics.listen", config.metrics.listen, True),
    ):
        if value or not allow_empty:
            try:
                address = parse_host_port(value, default_port=METRICS_PORT if dotted == "metrics.listen" else 5060)
                _check_host(address.host)
            except ValueError as exc:
                raise fail(dotted, f"expected host[:port], got \"{value}\" ({exc})") from None
    if sip.public_address:
        try:  # advertised as it is in Via, Contact and SDP c=: a host, no port
            _check_host(sip.public_address)
        except ValueError as exc:
            raise fail("sip.public_address", f'expected the address to advertise, a host name or an IP address '
                                              f'without a port, got "{sip.public_address}" ({exc})') from None
    if sip.domain:
        try:  # written into From, To, the AoR and every transfer target's URI
            _check_host(parse_host_port(sip.domain, default_port=5060).host)
        except ValueError as exc:
            raise fail("sip.domain", f'expected the SIP domain, a host name or an IP address, got "{sip.domain}" '
                                     f"({exc})") from None
    if sip.registrar and not sip.username and not sip.accounts:
        raise fail("sip.username", "required when sip.registrar is set (or list the extensions in sip.accounts)")
    if sip.username and not _USER_PART.fullmatch(sip.username):  # the rule of sip.accounts[].username
        raise fail("sip.username", f'expected a SIP user part such as "2001", got "{sip.username}"')
    if not _VALUE.fullmatch(sip.user_agent):  # a header value: CR or LF would start another header
        raise fail("sip.user_agent", "expected printable text of 1 to 128 characters, without control characters")
    if "\0" in config.recording.dir:
        raise fail("recording.dir", "expected a directory path, got one with a NUL character")
    if not config.recording.dir.strip():  # a ${VAR} set but empty, most likely: not "the working directory"
        raise fail("recording.dir", 'expected a directory path, got an empty one (write "." for the working '
                                    "directory)")
    keep = config.recording.keep_days
    if not (keep == 0 or 1 <= keep <= MAX_KEEP_DAYS):  # "not": NaN too
        raise fail("recording.keep_days", f"expected 0 (keep every file) or 1 to {MAX_KEEP_DAYS} days, got {keep:g}")
    if not 60 <= sip.expires <= MAX_EXPIRES:
        raise fail("sip.expires", f"expected 60 to {MAX_EXPIRES} seconds (a day), got {sip.expires}")
    if not 1 <= sip.max_calls <= MAX_CALLS:
        raise fail("sip.max_calls", f"expected 1 to {MAX_CALLS} (one process holds about 300 calls per core: run "
                                    f"more processes for more), got {sip.max_calls}")
    if not 90 <= sip.min_se <= MAX_SESSION_EXPIRES:
        raise fail("sip.min_se", f"expected 90 (RFC 4028) to {MAX_SESSION_EXPIRES} seconds, got {sip.min_se}")
    if not sip.min_se <= sip.session_expires <= MAX_SESSION_EXPIRES:
        raise fail("sip.session_expires", f"expected sip.min_se ({sip.min_se}) to {MAX_SESSION_EXPIRES} seconds, "
                                          f"got {sip.session_expires}")
    if not (media.rtp_timeout_s == 0 or 5 <= media.rtp_timeout_s <= MAX_RTP_TIMEOUT_S):
        raise fail("media.rtp_timeout_s", f"expected 0 (off) or 5 to {MAX_RTP_TIMEOUT_S} seconds, got "
                                          f"{_number(media.rtp_timeout_s)}")
    for i, host in enumerate(sip.trusted_hosts):
        problem = ""
        if parse_network(host) is None:
            try:  # a name, then: "300.1.1.1" or "10.0.0" would resolve to nobody, or somebody else
                _check_host(host.strip())
            except ValueError as exc:
                problem = f" ({exc})"
        if not _HOST_OR_NETWORK.fullmatch(host.strip()) or (parse_network(host) is None and "/" in host) or problem:
            raise fail(f"sip.trusted_hosts[{i}]", f'expected an address, a network (10.0.0.0/24) or a host name, '
                                                  f'got "{host}"{problem}')
    for i, alias in enumerate(sip.aliases):
        if not _USER_PART.fullmatch(alias):
            raise fail(f"sip.aliases[{i}]", f'expected a SIP user part such as "2001" or "+15551230000", got '
                                            f'"{alias}"')
    _check_limits(sip.limits, fail)
    _check_tls(sip, fail)
    match = re.fullmatch(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*", media.rtp_ports)  # not \d: it matches "٤" too
    if not match or not 1024 <= int(match.group(1)) < int(match.group(2)) <= 65535:
        raise fail("media.rtp_ports", f'expected a range like "40000-40999", got "{media.rtp_ports}"')
    media.rtp_ports = f"{int(match.group(1))}-{int(match.group(2))}"
    if not media.codecs:
        raise fail("media.codecs", f"expected a list of codecs from {', '.join(CODECS)}")
    normalised = []
    for codec in media.codecs:
        name = codec.upper().replace(".", "")
        if name not in CODECS:
            raise fail("media.codecs", f"expected codecs from {', '.join(CODECS)}, got \"{codec}\"")
        if name in normalised:  # an order of preference names each once (as media.srtp_suites)
            raise fail("media.codecs", f'"{codec}" is listed twice')
        normalised.append(name)
    media.codecs = normalised
    if not media.srtp_suites:
        raise fail("media.srtp_suites", f"expected a list of suites from {', '.join(SUITES)}")
    for i, suite in enumerate(media.srtp_suites):
        if suite.upper() not in SUITES:
            raise fail(f"media.srtp_suites[{i}]", f'expected a suite from {", ".join(SUITES)}, got "{suite}"')
        if suite.upper() in [s.upper() for s in media.srtp_suites[:i]]:
            raise fail(f"media.srtp_suites[{i}]", f'"{suite}" is listed twice')
    media.srtp_suites = [suite.upper() for suite in media.srtp_suites]
    if media.srtp == "required" and sip.transport != "tls" and not media.srtp_over_insecure_signalling:
        raise fail("media.srtp", f"required, but SDES keys are taken only over TLS and sip.transport is "
                                 f"{sip.transport}: every call would be refused (use sip.transport: tls, or set "
                                 "media.srtp_over_insecure_signalling: true, knowing the keys then travel in the "
                                 "clear)")
    if not 0 <= media.jitter_ms <= 1000:
        raise fail("media.jitter_ms", f"expected 0 to 1000, got {media.jitter_ms}")
    _check_empty_passwords(ctx, config, fail)
    if rt.provider in ("openai", "azure") and not rt.api_key:
        raise fail("realtime.api_key", _required(ctx, "realtime.api_key", f"required for provider {rt.provider} "
                                                 "(e.g. api_key: ${OPENAI_API_KEY})"))
    if rt.provider in ("openai", "azure") and (not rt.model.strip() or _CONTROL.search(rt.model)):
        raise fail("realtime.model", f"expected the model{' deployment' if rt.provider == 'azure' else ''} name, "
                                     f'such as "gpt-realtime", got "{rt.model}"')
    for name in ("model", "voice", "transcription_model", "api_version"):
        if _CONTROL.search(getattr(rt, name)):
            raise fail(f"realtime.{name}", "expected text without line breaks or other control characters")
    if rt.provider == "azure" and not rt.url:
        raise fail("realtime.url", "required for provider azure (https://RESOURCE.openai.azure.com)")
    if rt.url and not re.match(r"^(wss?|https?)://", rt.url):
        raise fail("realtime.url", f'expected a ws://, wss:// or https:// URL, got "{_url_shown(rt.url)}"')
    if rt.url:
        try:
            parts = urlsplit(rt.url)
            port_ok = parts.port != 0
        except ValueError:  # an unclosed IPv6 bracket, a port that is no number or past 65535
            parts, port_ok = None, False
        if parts is None or not parts.hostname or not port_ok or _CONTROL.search(rt.url):
            raise fail("realtime.url", f'expected a URL with a host and a valid port, got "{_url_shown(rt.url)}"')
        if parts.username is not None or parts.password is not None:
            # sipagent check prints the URL: a password in it would be printed too. The key goes in api_key.
            raise fail("realtime.url", "credentials in the URL are not supported (put the key in "
                                       "realtime.api_key)")
    if _CONTROL.search(rt.api_key):
        # Usually a trailing newline from the file or command the key came from (API_KEY=$(cat key.txt)
        # keeps none, but an env file or a secret mount may): it would break the Authorization header.
        raise fail("realtime.api_key", "contains a line break or another control character (a trailing newline "
                                       "from the file it came from?)")
    if not 0.1 <= rt.connect_timeout_s <= 300:
        raise fail("realtime.connect_timeout_s", f"expected 0.1 to 300 seconds, got {rt.connect_timeout_s:g}")
    if not 1 <= rt.max_session_s <= MAX_SESSION_S:
        raise fail("realtime.max_session_s", f"expected 1 to {MAX_SESSION_S} seconds, got {rt.max_session_s}")
    if rt.local or rt.provider == "local":
        _check_local(ctx, root, rt)
    _check_agent(config.agent, "agent", config, fail)
    for name, profile in config.agents.items():
        _check_agent(profile, f"agents.{name}", config, fail)
    _check_accounts(config, fail)
    _check_routes(config, fail)
    if config.events.webhook is not None:
        _check_event_webhook(ctx, config.events.webhook, fail)
    if config.outbound.max_calls == 0 and _child(_child(root, "outbound"), "max_calls") is not None:
        # 0 is how the loader says "not set" (the default, 4): written in the file it would allow 4 calls to
        # someone who meant none.
        raise fail("outbound.max_calls", f"expected 1 to sip.max_calls ({config.sip.max_calls}), got 0 (to place "
                                         "no calls, leave control.listen unset and do not run sipagent call)")
    _check_outbound(config, fail)
    _check_control(ctx, config, fail)
    _check_context(ctx, root, config, fail)


def _check_empty_passwords(ctx: _Ctx, config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """A password written as ``${VAR}`` whose variable is set but empty, for an account that registers: the
    file says where the password comes from, the environment is what is wrong (an empty password would only
    show as 401 after 401 at the PBX)."""
    keys = [f"sip.accounts[{i}].password" for i, account in enumerate(config.sip.accounts) if not account.password]
    if config.sip.registrar and config.sip.username and not config.sip.password:
        keys.insert(0, "sip.password")
    for key in keys:
        if key in ctx.empty_vars:
            raise fail(key, f"{_empty_var(ctx, key)} (to register without a password, remove the key)")


def _empty_var(ctx: _Ctx, key: str) -> str:
    return f"environment variable {ctx.empty_vars[key]} is set but empty"


def _required(ctx: _Ctx, key: str, message: str) -> str:
    """``message`` for a required secret that is empty, unless a ``${VAR}`` set but empty made it so."""
    return f"required, and {_empty_var(ctx, key)}" if key in ctx.empty_vars else message


def _check_local(ctx: _Ctx, root: yaml.Node | None, rt: RealtimeConfig) -> None:
    """realtime.local, read now as the local backend will read it when it starts, so that a mistake is named
    by ``sipagent check`` with its line, not when the agent starts."""
    try:
        LocalBrainConfig.from_mapping(rt.local)
    except ConfigError as exc:
        key = exc.key or "realtime.local"
        raise ctx.error(_node_for(root, key), key, exc.detail) from None


def _check_host(host: str) -> None:
    """A host name or an IP address, as it is written into SIP headers; raises ValueError."""
    if ":" in host:
        if ipaddress.IPv6Address(host).scope_id:  # ValueError when it is none
            raise ValueError("a zone (%name) means nothing to a peer and cannot be written in SIP; "
                             "use a global or unique-local address")
    elif not _HOST.fullmatch(host):
        raise ValueError(f"not a host name or address: {host[:MAX_SHOWN]!r}")
    elif host.rstrip(".").rpartition(".")[2].isdigit():  # a name never ends in a number: an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if host.isdigit():
                raise ValueError(f"{host} is a port, not a host: write host:port, e.g. 0.0.0.0:{host}") from None
            raise ValueError(f"{host} is not an IPv4 address (four numbers from 0 to 255)") from None
    elif len(host.rstrip(".")) > 253 or any(len(label) > 63 for label in host.split(".")):
        raise ValueError("not a host name: at most 63 characters between dots and 253 in all")


def _check_agent(agent: AgentConfig, prefix: str, config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """The checks of one profile (``prefix``: "agent" or "agents.NAME"); normalises its transfer targets."""
    names = set()
    for i, tool in enumerate(agent.tools):
        if not _TOOL_NAME.fullmatch(tool.name):
            raise fail(f"{prefix}.tools[{i}].name", 'expected 1 to 64 letters, digits, "_" or "-" (the Realtime '
                                                    f"API's rule for function names), got {tool.name[:80]!r}")
        if tool.name in names:
            raise fail(f"{prefix}.tools[{i}]", f'duplicate tool name "{tool.name}"')
        names.add(tool.name)
        if tool.name not in BUILTIN_TOOLS and not tool.url:
            raise fail(
                f"{prefix}.tools[{i}]",
                f'tool "{tool.name}" needs a url (built-in tools are: {", ".join(sorted(BUILTIN_TOOLS))})',
            )
        if not 0.1 <= tool.timeout_s <= 300:
            raise fail(f"{prefix}.tools[{i}].timeout_s", f"expected 0.1 to 300 seconds, got {tool.timeout_s:g}")
        if tool.url and not tool.url.startswith("builtin:"):
            tool.headers = _header_texts(tool.headers, f"{prefix}.tools[{i}].headers", fail)
            try:  # the request the tool will send, built once now so that a bad URL or header fails here
                prepare(tool.method, tool.url, tool.headers, None if tool.method == "GET" else b"{}")
            except RequestRefused as exc:
                key = "headers" if str(exc).startswith("header") else "url"
                raise fail(f"{prefix}.tools[{i}].{key}", str(exc)) from None
            properties = tool.parameters.get("properties")
            if tool.parameters.get("type") != "object" or not isinstance(properties, dict | None):
                # The Realtime API takes a function's parameters only as an object schema: any other would have
                # the session refused, and every call fail, at the first call rather than here.
                kind = tool.parameters.get("type")
                got = "properties that are no mapping" if kind == "object" else f"type: {_kind(kind)}"
                raise fail(f"{prefix}.tools[{i}].parameters", "expected a JSON Schema of an object "
                                                              f"({{type: object, properties: {{...}}}}), got {got}")
            if tool.method != "GET" and isinstance(properties, dict) and CONTEXT_KEY in properties:
                raise fail(f"{prefix}.tools[{i}].parameters",
                           f'the property "{CONTEXT_KEY}" is reserved: sipagent sends the call\'s context under '
                           "that name in the request body")
    if agent.on_failure.action == "transfer" and not (agent.on_failure.target or agent.transfer_target):
        raise fail(f"{prefix}.on_failure.target", "required when on_failure.action is transfer")
    _check_transfer_targets(agent, prefix, config.sip.effective_domain, fail)
    _check_transfer_modes(agent, prefix, config.source, fail)
    _check_transfer_transport(agent, prefix, config.sip.transport, fail)
    if not (agent.idle_timeout_s == 0 or 1 <= agent.idle_timeout_s <= MAX_IDLE_TIMEOUT_S):
        raise fail(f"{prefix}.idle_timeout_s", f"expected 0 (never prompt) or 1 to {MAX_IDLE_TIMEOUT_S} seconds, "
                                               f"got {_number(agent.idle_timeout_s)}")
    if not 0 <= agent.shutdown_grace_s <= MAX_SHUTDOWN_GRACE_S:
        raise fail(f"{prefix}.shutdown_grace_s", f"expected 0 to {MAX_SHUTDOWN_GRACE_S} seconds, got "
                                                 f"{agent.shutdown_grace_s:g}")
    if not (agent.max_call_s == 0 or 10 <= agent.max_call_s <= MAX_CALL_S):
        raise fail(f"{prefix}.max_call_s", f"expected 0 (no limit) or 10 to {MAX_CALL_S} seconds, got "
                                           f"{_number(agent.max_call_s)}")
    if not (config.media.rtp_timeout_s or agent.max_call_s or agent.idle_timeout_s > 0):
        # A far end that vanishes without a BYE (a PBX restarted, a NAT binding gone) sends nothing more: only
        # one of these three ends such a call.
        raise fail("media.rtp_timeout_s", f"0 (off) with {prefix}.max_call_s: 0 and {prefix}.idle_timeout_s: 0 "
                                          "would leave a call whose far end vanished without a BYE up forever; "
                                          "set one")
    _check_barge_in(agent.barge_in, prefix, fail)
    _check_dtmf(agent.dtmf, prefix, fail)
    if agent.language and not _LANGUAGE.fullmatch(agent.language):
        raise fail(f"{prefix}.language", f'expected a language code such as "en" or "de", got "{agent.language}"')
    _check_answering_machine(agent.answering_machine, prefix, fail)


def _check_answering_machine(amd: AnsweringMachineConfig, prefix: str,
                             fail: Callable[[str, str], ConfigError]) -> None:
    key = f"{prefix}.answering_machine."
    if amd.on_machine == "leave_message" and not amd.message.strip():
        raise fail(key + "message", "required when on_machine is leave_message: the text left after the beep")
    if not 1.0 <= amd.greeting_max_s <= 10.0:
        raise fail(key + "greeting_max_s", f"expected 1 to 10 seconds, got {amd.greeting_max_s:g}")
    if not amd.greeting_max_s < amd.timeout_s <= 30.0:
        raise fail(key + "timeout_s", f"expected more than greeting_max_s ({amd.greeting_max_s:g}) and at most "
                                      f"30 seconds, got {amd.timeout_s:g}")
    if len(amd.message) > 2000:
        raise fail(key + "message", f"expected at most 2000 characters, got {len(amd.message)}")


def _check_outbound(config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    out, key = config.outbound, "outbound."
    if out.max_calls and not 1 <= out.max_calls <= config.sip.max_calls:
        raise fail(key + "max_calls", f"expected 1 to sip.max_calls ({config.sip.max_calls}), got {out.max_calls}")
    if not 0.01 <= out.calls_per_second <= 100:
        raise fail(key + "calls_per_second", f"expected 0.01 to 100, got {out.calls_per_second:g}")
    if not 5 <= out.ring_timeout_s <= 300:
        raise fail(key + "ring_timeout_s", f"expected 5 to 300 seconds, got {out.ring_timeout_s:g}")
    if out.account:
        names = [account.name for account in config.accounts()]
        if out.account not in names:
            known = ", ".join(names) or "none: direct mode dials without one"
            raise fail(key + "account", f'unknown account "{out.account}" (accounts: {known})')
    if out.profile and out.profile not in config.profiles():
        raise fail(key + "profile", _unknown_profile(out.profile, config))


def _check_control(ctx: _Ctx, config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """control: off without listen; with it a token (the file's, else $SIPAGENT_CONTROL_TOKEN) is required.
    The token's value is never echoed, only its absence or length."""
    control, key = config.control, "control."
    if not control.listen:
        return
    try:
        _check_host(control_address(control.listen).host)
    except ValueError as exc:
        raise fail(key + "listen", f'expected a port (on loopback) or host:port, got "{control.listen}" '
                                   f"({exc})") from None
    if not control.token:
        control.token = ctx.env.get(CONTROL_TOKEN_ENV, "")
    if not control.token:
        raise fail(key + "token", _required(ctx, key + "token", "required when control.listen is set: the bearer "
                                            f"token clients send (e.g. token: ${{{CONTROL_TOKEN_ENV}}}, or set "
                                            f"{CONTROL_TOKEN_ENV})"))
    if len(control.token) < MIN_CONTROL_TOKEN or not control.token.isascii() or not control.token.isprintable() \
            or " " in control.token:
        raise fail(key + "token", f"expected at least {MIN_CONTROL_TOKEN} printable ASCII characters without "
                                  "spaces (e.g. openssl rand -hex 32)")
    if not 1024 <= control.max_body_bytes <= 1048576:
        raise fail(key + "max_body_bytes", f"expected 1024 to 1048576, got {control.max_body_bytes}")
    if not 0 <= control.history <= 100000:
        raise fail(key + "history", f"expected 0 to 100000, got {control.history}")


def _check_accounts(config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """``sip.accounts``: extensions registered besides ``sip.username``, each with a name of its own."""
    sip = config.sip
    if sip.accounts and not sip.registrar:
        raise fail("sip.accounts", "accounts register: sip.registrar is required")
    usernames = {sip.username} if sip.username else set()
    names = {sip.username} if sip.username else set()
    for i, account in enumerate(sip.accounts):
        key = f"sip.accounts[{i}]"
        if not _USER_PART.fullmatch(account.username):
            raise fail(f"{key}.username", f'expected a SIP user part such as "2001", got "{account.username}"')
        if account.username in usernames:
            raise fail(f"{key}.username", f'"{account.username}" is registered twice')
        usernames.add(account.username)
        account.name = account.name or account.username
        if not _USER_PART.fullmatch(account.name):
            raise fail(f"{key}.name", f'expected letters, digits, +, *, ., _ or -, got "{account.name}"')
        if account.name in names:
            raise fail(f"{key}.name", f'duplicate account name "{account.name}"')
        names.add(account.name)
        if account.auth_user and not re.fullmatch(r"[^\s\"\\]{1,128}", account.auth_user):
            raise fail(f"{key}.auth_user", "expected a user name without spaces or quotes")
        if not (account.expires == 0 or 60 <= account.expires <= MAX_EXPIRES):
            raise fail(f"{key}.expires", f"expected 0 (sip.expires) or 60 to {MAX_EXPIRES} seconds (a day), got "
                                         f"{account.expires}")
        if account.agent and account.agent not in config.profiles():
            raise fail(f"{key}.agent", _unknown_profile(account.agent, config))


def _unknown_profile(name: str, config: Config) -> str:
    return f'unknown profile "{name}" (profiles: {", ".join(config.profiles())})'


def _check_routes(config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """Each route names a known profile and conditions that can match; only the last may have none."""
    accounts = {account.name for account in config.accounts()}
    ours = config.our_users()
    seen: dict[tuple[tuple[str, str], ...], int] = {}
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        if not route.agent:
            raise fail(key, "expected agent: the profile this route's calls go to")
        if route.agent not in config.profiles():
            raise fail(f"{key}.agent", _unknown_profile(route.agent, config))
        for name in ("dialed", "caller"):
            pattern = getattr(route, name)
            if pattern and not _PATTERN.fullmatch(pattern):
                raise fail(f"{key}.{name}", f'expected a number or extension, optionally ending in * for a prefix '
                                            f'("2001", "+4930*"), got "{pattern}"')
        if route.dialed and ours and not any(pattern_matches(route.dialed, user) for user in ours):
            # The dialed number is the Request-URI's user part, and an INVITE for a user part that is not ours
            # is refused (404) before any route is tried: this route could never match.
            raise fail(f"{key}.dialed", f'"{route.dialed}" is not one of our user parts ({", ".join(ours)}): '
                                        "calls to it are refused; add it to sip.aliases")
        if route.header and not _HEADER_NAME.fullmatch(route.header):
            raise fail(f"{key}.header", f'expected a SIP header name such as "X-Queue", got "{route.header}"')
        if route.header and not route.value:
            raise fail(key, f"header {route.header} needs a value to match (* for any)")
        if route.value and not route.header:
            raise fail(f"{key}.value", "value needs header: the header it is matched against")
        if route.value and not _VALUE.fullmatch(route.value):
            raise fail(f"{key}.value", "expected printable text of at most 128 characters, optionally ending in *")
        if route.account and route.account not in accounts:
            raise fail(f"{key}.account", f'unknown account "{route.account}" (accounts: '
                                         f'{", ".join(sorted(accounts)) or "none"})')
        conditions = tuple(sorted((k, v.lower() if k == "header" else v) for k, v in route.conditions.items()))
        if not conditions and i != len(config.routes) - 1:
            raise fail(key, "a route without conditions (dialed, caller, header, account) matches every call: "
                            "only the last route may be one")
        if conditions in seen:
            raise fail(key, f"unreachable: routes[{seen[conditions]}] has the same conditions")
        seen[conditions] = i


_PATTERN = re.compile(r"[0-9A-Za-z+*#._\-]{0,63}\*?|\*")
_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


def _check_context(ctx: _Ctx, root: yaml.Node | None, config: Config,
                   fail: Callable[[str, str], ConfigError]) -> None:
    """context.headers, timezone and defaults, then every templated text against them."""
    context = config.context
    seen: set[str] = set()  # lower case: header names are case-blind
    if len(context.headers) > MAX_CONTEXT_HEADERS:  # identify() keeps no more
        raise fail("context.headers", f"expected at most {MAX_CONTEXT_HEADERS} headers, got {len(context.headers)}")
    for i, name in enumerate(context.headers):
        if not templates.HEADER_NAME.fullmatch(name):
            raise fail(f"context.headers[{i}]", f'expected a header name such as "X-Customer-Id", got "{name}"')
        if name.lower() in seen:
            raise fail(f"context.headers[{i}]", f'header "{name}" is listed twice')
        seen.add(name.lower())
    if context.timezone:
        try:
            zoneinfo.ZoneInfo(context.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
            raise fail("context.timezone", f'expected an IANA time zone such as "Europe/Berlin" or "UTC", got '
                                           f'"{context.timezone}"') from None
    for raw in context.defaults:
        name = str(raw)
        problem = "" if name in templates.WIRE_VARIABLES else templates.variable_problem(name, context.headers)
        if not problem and name in templates.CALL_VARIABLES:
            problem = f"{{{name}}} always has a value: it takes no default"
        if problem:
            raise fail(f"context.defaults.{name}", problem)
        if isinstance(context.defaults[raw], dict | list):
            raise fail(f"context.defaults.{name}", "expected a text, got a mapping or a list")
    for dotted in TEMPLATE_KEYS:
        check_template_key(ctx, root, dotted, _attribute(config, dotted), context.headers)
    for name, profile in config.agents.items():  # what a profile inherits was checked just above
        for dotted in PROFILE_TEMPLATE_KEYS:
            check_template_key(ctx, root, f"agents.{name}.{dotted}", _attribute(profile, dotted), context.headers)


def _attribute(owner: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        owner = getattr(owner, part)
    return owner


def check_template_key(ctx: _Ctx, root: yaml.Node | None, dotted: str, text: str, headers: Collection[str]) -> None:
    """Raises ConfigError, at the line of the mistake, unless the text at key ``dotted`` is a valid template
    (sipagent.bridge.context.check_template) with ``headers`` listed. For any templated key."""
    try:
        templates.check_template(text, headers)
    except templates.TemplateError as exc:
        node = _node_for(root, dotted)
        line = None
        if node is not None:
            line = node.start_mark.line + 1
            if isinstance(node, yaml.ScalarNode) and node.style == "|" and node.value == text:
                line += exc.line  # a literal block keeps its lines: point at the one with the mistake
        raise ConfigError(exc.reason, path=ctx.path, line=line, key=dotted) from None


_HOST_OR_NETWORK = re.compile(r"\[?[0-9A-Za-z.:\-]+\]?(/[0-9]{1,3})?")
_USER_PART = re.compile(r"[0-9A-Za-z+*._\-]{1,64}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HOST = re.compile(r"[0-9A-Za-z_\-]+(\.[0-9A-Za-z_\-]+)*\.?")  # a name or an IPv4 address (IPv6: ipaddress)
_TARGET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,39}")
_PROFILE_NAME = _TARGET_NAME
_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.\-]{1,64}")  # an RFC 3261 token
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")


def _check_tls(sip: SipConfig, fail: Callable[[str, str], ConfigError]) -> None:
    """sip.tls: its files are loaded now, as the agent will load them, so that a missing file, a key that is
    not the certificate's or a file that is not PEM is named here with its key, not at the first call."""
    tls, key = sip.tls, "sip.tls."
    if sip.transport != "tls":
        for name in ("ca_file", "server_name", "cert_file", "key_file", "sips"):
            if getattr(tls, name):
                raise fail(key + name, 'only used with sip.transport: tls (set it, or remove sip.tls)')
        if not tls.verify:
            raise fail(key + "verify", 'only used with sip.transport: tls (set it, or remove sip.tls)')
    if tls.key_file and not tls.cert_file:
        raise fail(key + "key_file", "set sip.tls.cert_file too (the certificate this key belongs to)")
    if tls.server_name and not _HOST_OR_NETWORK.fullmatch(tls.server_name):
        raise fail(key + "server_name", f'expected a host name such as "pbx.example.com", got "{tls.server_name}"')
    if sip.transport == "tls":
        try:
            client_context(tls.settings)
            if tls.cert_file:
                server_context(tls.settings)
        except TlsSetupError as exc:
            raise fail(key + exc.key, exc.detail) from None
        if tls.ca_file and tls.verify and not _holds_ca(tls.ca_file) and not _holds_self_signed(tls.ca_file):
            # Loads, but can vouch for nobody: a server's certificate issued by a CA (the PBX's own, copied
            # from its config, or ours) is no trust anchor, and every handshake would fail "unknown CA".
            raise fail(key + "ca_file", f'"{tls.ca_file}" holds no CA certificate (nor a self-signed one): it '
                                        "looks like a server's certificate; put the CA that signed the PBX's "
                                        "certificate here")
    if not (sip.keepalive_s == 0 or 5 <= sip.keepalive_s <= 3600):
        raise fail("sip.keepalive_s", f"expected 0 (off) or 5 to 3600 seconds, got {sip.keepalive_s:g}")
    if not 1 <= sip.keepalive_timeout_s <= 60:
        raise fail("sip.keepalive_timeout_s", f"expected 1 to 60 seconds, got {sip.keepalive_timeout_s:g}")


def _holds_ca(path: str) -> bool:
    """Whether a PEM file (that client_context loaded) holds a CA certificate, the system's CAs aside."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError):
        return False
    return bool(context.cert_store_stats().get("x509_ca"))


def _holds_self_signed(path: str) -> bool:
    """Whether a PEM file holds a certificate whose issuer is its subject (a PBX's self-signed certificate
    trusted as it is). Read with a few lines of DER: the ssl module says which are CAs, not this."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for block in re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S):
        try:
            fields = _der_children(_der_children(ssl.PEM_cert_to_DER_cert(block))[0][1])[0][1]
            parts = [raw for tag, _, raw in _der_children(fields) if tag != 0xA0]  # without [0] version
            if len(parts) >= 5 and parts[2] == parts[4]:  # serial, signature, issuer, validity, subject
                return True
        except (ValueError, IndexError):
            continue
    return False


def _der_children(der: bytes) -> list[tuple[int, bytes, bytes]]:
    """The elements of a DER SEQUENCE's contents (or of a whole DER value): (tag, contents, raw bytes)."""
    out, i = [], 0
    while i < len(der):
        tag, length, i0 = der[i], der[i + 1], i
        i += 2
        if length & 0x80:
            count = length & 0x7F
            length, i = int.from_bytes(der[i:i + count], "big"), i + count
        if i + length > len(der):
            raise ValueError("truncated DER")
        out.append((tag, der[i:i + length], der[i0:i + length]))
        i += length
    return out


def _check_limits(limits: SipLimitsConfig, fail: Callable[[str, str], ConfigError]) -> None:
    key = "sip.limits."
    for name, low, high in (("max_message_bytes", 1500, 65535), ("transactions", 16, MAX_TRANSACTIONS),
                            ("transactions_per_source", 4, MAX_TRANSACTIONS),
                            ("tcp_connections", 1, MAX_TCP_CONNECTIONS),
                            ("tcp_connections_per_source", 1, MAX_TCP_CONNECTIONS)):
        value = getattr(limits, name)
        if not low <= value <= high:
            raise fail(key + name, f"expected {low} to {high}, got {value}")
    for name, high in (("tcp_idle_s", MAX_TCP_IDLE_S), ("tcp_message_s", MAX_TCP_MESSAGE_S)):
        value = getattr(limits, name)
        if not 0 < value <= high:
            raise fail(key + name, f"expected a number of seconds above 0 and at most {high}, got {_number(value)}")


def transfer_uri(target: str, domain: str) -> str:
    """A configured transfer target as a SIP URI: a bare extension ("600") means ``sip:600@domain``.
    Raises ValueError with what is wrong."""
    target = target.strip()
    if _USER_PART.fullmatch(target):
        host = f"[{domain}]" if ":" in domain else domain
        target = f"sip:{target}@{host}"
    try:
        return str(parse_target_uri(target))
    except SipParseError as exc:
        raise ValueError(f'expected an extension ("600") or a sip: URI ("sip:600@pbx.example.com"), got '
                         f'"{target}" ({exc.reason})') from None


def _check_transfer_modes(agent: AgentConfig, prefix: str, source: str,
                          fail: Callable[[str, str], ConfigError]) -> None:
    """A warm transfer's settings: modes only for targets that exist, a hold audio that can be played."""
    transfer, key = agent.transfer, f"{prefix}.transfer"
    known = set(agent.transfer_targets) | ({"default"} if agent.transfer_target else set())
    for name, mode in transfer.modes.items():
        if mode not in TRANSFER_MODES:  # a free-form mapping: its values are not typed by the schema
            raise fail(f"{key}.modes.{name}", f"expected one of {', '.join(TRANSFER_MODES)}, got "
                                              f"{_quote(mode, '') if isinstance(mode, str) else _kind(mode)}")
        if str(name) not in known:
            raise fail(f"{key}.modes.{name}", "not a transfer target of this profile (known: "
                                              f"{', '.join(sorted(known)) or 'none'}; the desk is \"default\")")
    for name in ("ring_timeout_s", "briefing_limit_s"):
        value = getattr(transfer, name)
        if not 1 <= value <= 120:
            raise fail(f"{key}.{name}", f"expected 1 to 120 seconds, got {value}")
    if len(transfer.hold_message) > 300:
        raise fail(f"{key}.hold_message", "expected at most 300 characters")
    audio = transfer.hold_audio
    if audio not in ("tone", "silence"):
        path = Path(audio).expanduser()
        if not path.is_absolute() and Path(source).is_file():  # relative to the file that names it
            path = Path(source).parent / path
        try:
            load_hold_wav(path)
        except (OSError, ValueError) as exc:
            raise fail(f"{key}.hold_audio", f'expected "tone", "silence" or a readable WAV file: {exc}') from None
        transfer.hold_audio = str(path)


def _check_transfer_transport(agent: AgentConfig, prefix: str, transport: str,
                              fail: Callable[[str, str], ConfigError]) -> None:
    """What a target's URI asks of the agent: no password (a Refer-To and ``sipagent check`` would show it),
    and for a warm target, which the agent dials itself, no sips: unless the agent speaks TLS (a sips: request
    must be TLS on every hop: the PBX refuses one that came over UDP or TCP, and the caller is taken back)."""
    targets = [(f"{prefix}.transfer_targets.{name}", name, uri) for name, uri in agent.transfer_targets.items()]
    if agent.transfer_target:
        targets.append((f"{prefix}.transfer_target", "default", agent.transfer_target))
    if agent.on_failure.target:
        targets.append((f"{prefix}.on_failure.target", "", agent.on_failure.target))
    for dotted, name, uri in targets:
        parsed = parse_target_uri(uri)
        if parsed.password is not None:
            raise fail(dotted, "a password in the URI is not allowed (it would be sent in the Refer-To, logged "
                               "and printed by sipagent check)")
        if name and parsed.scheme == "sips" and transport != "tls" and agent.transfer.mode_of(name) == "warm":
            raise fail(dotted, f"a warm transfer target is dialled by the agent, and a sips: URI needs "
                               f"sip.transport: tls (it is {transport}); write sip: instead, or make it blind")


def _check_transfer_targets(agent: AgentConfig, prefix: str, domain: str,
                            fail: Callable[[str, str], ConfigError]) -> None:
    """Every place a caller can be sent is written here, as a URI: the model only ever names one."""
    targets: dict[str, str] = {}
    for raw_name, value in agent.transfer_targets.items():
        name = str(raw_name)  # YAML may type a key or a value: "600" and 600 are the same extension
        if not _TARGET_NAME.fullmatch(name):
            raise fail(f"{prefix}.transfer_targets.{name}",
                       "expected a name of letters, digits, _ or - starting with a letter (the model sees it)")
        if isinstance(value, bool) or not isinstance(value, str | int):  # null would be the extension "None"
            raise fail(f"{prefix}.transfer_targets.{name}", 'expected an extension ("600") or a sip: URI '
                                                            f'("sip:600@pbx.example.com"), got {_kind(value)}')
        try:
            targets[name] = transfer_uri(str(value), domain)
        except ValueError as exc:
            raise fail(f"{prefix}.transfer_targets.{name}", str(exc)) from None
    agent.transfer_targets = targets
    for dotted, owner, attr in ((f"{prefix}.transfer_target", agent, "transfer_target"),
                                (f"{prefix}.on_failure.target", agent.on_failure, "target")):
        value = getattr(owner, attr)
        if value:
            try:
                setattr(owner, attr, transfer_uri(value, domain))
            except ValueError as exc:
                raise fail(dotted, str(exc)) from None


def _check_dtmf(dtmf: DtmfConfig, prefix: str, fail: Callable[[str, str], ConfigError]) -> None:
    """The same bounds the model's collect_digits arguments get (sipagent.bridge.digits)."""
    key = f"{prefix}.dtmf."
    if dtmf.terminator not in TERMINATORS:
        raise fail(key + "terminator", f'expected "#", "*" or "" (none), got "{dtmf.terminator}"')
    if not 1 <= dtmf.max_digits <= MAX_DIGITS:
        raise fail(key + "max_digits", f"expected 1 to {MAX_DIGITS}, got {dtmf.max_digits}")
    for name, (low, high) in (("first_digit_timeout_s", FIRST_DIGIT_TIMEOUT_S),
                              ("inter_digit_timeout_s", INTER_DIGIT_TIMEOUT_S), ("max_wait_s", (5.0, 600.0))):
        value = getattr(dtmf, name)
        if not low <= value <= high:
            raise fail(key + name, f"expected {low:g} to {high:g} seconds, got {value:g}")
    if not 40 <= dtmf.tone_ms <= 1000:
        raise fail(key + "tone_ms", f"expected 40 to 1000 ms, got {dtmf.tone_ms}")
    keys = str(dtmf.send_keys).upper()
    if not keys or any(k not in DTMF_KEYS for k in keys):
        raise fail(key + "send_keys", f'expected some of the keys "{DTMF_KEYS}", got {str(dtmf.send_keys)[:40]!r}')
    dtmf.send_keys = "".join(k for k in DTMF_KEYS if k in keys)


def _check_barge_in(barge: BargeInConfig, prefix: str, fail: Callable[[str, str], ConfigError]) -> None:
    """Durations are counted in whole 20 ms frames; the pause must come before the confirmation."""
    key = f"{prefix}.barge_in."
    if not 20 <= barge.min_speech_ms <= 2000:
        raise fail(key + "min_speech_ms", f"expected 20 to 2000 ms, got {barge.min_speech_ms}")
    if not 0 <= barge.protect_greeting_ms <= MAX_PROTECT_GREETING_MS:
        raise fail(key + "protect_greeting_ms", f"expected 0 to {MAX_PROTECT_GREETING_MS} ms, got "
                                                f"{barge.protect_greeting_ms}")
    if barge.pause_after_ms and not 20 <= barge.pause_after_ms < barge.min_speech_ms:
        raise fail(key + "pause_after_ms", f"expected 0 (no pause) or 20 ms up to less than min_speech_ms "
                                           f"({barge.min_speech_ms}), got {barge.pause_after_ms}")
    if not 20 <= barge.resume_after_ms <= 5000:
        raise fail(key + "resume_after_ms", f"expected 20 to 5000 ms, got {barge.resume_after_ms}")
    if not -120 <= barge.threshold_db <= 0:
        raise fail(key + "threshold_db", f"expected a level in dBFS from -120 to 0, got {barge.threshold_db:g}")
    if not 6 <= barge.duck_db <= 60:
        raise fail(key + "duck_db", f"expected 6 to 60 dB (how far the agent is turned down), got {barge.duck_db}")
    if not 20 <= barge.unduck_after_ms <= barge.resume_after_ms:
        raise fail(key + "unduck_after_ms", f"expected 20 ms up to resume_after_ms ({barge.resume_after_ms}), "
                                            f"got {barge.unduck_after_ms}")



def _header_texts(headers: Mapping[str, Any], dotted: str, fail: Callable[[str, str], ConfigError]) -> dict[str, str]:
    """Configured HTTP header values as text: a number is its digits; null, true or a mapping would be sent as
    Python writes it ("None", "True", "{'a': 1}"), so they are refused."""
    texts: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise fail(f"{dotted}.{name}", f"expected a text (quote it), got {_kind(value)}")
        texts[str(name)] = str(value)
    return texts


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _check_event_webhook(ctx: _Ctx, hook: EventWebhookConfig, fail: Callable[[str, str], ConfigError]) -> None:
    """events.webhook: the request is built once now (URL, headers), as for a tool; the secret is never
    echoed (SECRET_KEYS), only its absence or length is named."""
    key = "events.webhook."
    hook.headers = _header_texts(hook.headers, key + "headers", fail)
    for name in hook.headers:
        if name.lower() in EVENT_HEADERS:
            raise fail(key + "headers", f"header {name} is set by sipagent, not by the configuration")
    try:
        prepare("POST", hook.url, hook.headers, b"{}")
    except RequestRefused as exc:
        raise fail(key + ("headers" if str(exc).startswith("header") else "url"), str(exc)) from None
    if not hook.secret:
        raise fail(key + "secret", _required(ctx, key + "secret", "required: the key events are signed with, "
                                             "shared with the receiver (e.g. secret: ${SIPAGENT_EVENTS_SECRET})"))
    if len(hook.secret) < MIN_EVENT_SECRET:
        raise fail(key + "secret", f"expected at least {MIN_EVENT_SECRET} characters (e.g. openssl rand -hex 32)")
    if not hook.events:
        raise fail(key + "events", f"expected at least one of {', '.join(CALL_EVENT_TYPES)} (to send none, "
                                   "remove events.webhook)")
    for i, kind in enumerate(hook.events):
        if kind not in CALL_EVENT_TYPES:
            raise fail(f"{key}events[{i}]", f'expected one of {", ".join(CALL_EVENT_TYPES)}, got "{kind}"')
    hook.events = list(dict.fromkeys(hook.events))
    for name, low, high in (("timeout_s", 0.1, 60.0), ("backoff_s", 0.01, 60.0), ("retry_window_s", 1.0, 86400.0),
                            ("shutdown_flush_s", 0.0, 60.0)):
        value = getattr(hook, name)
        if not low <= value <= high:
            raise fail(key + name, f"expected {low:g} to {high:g} seconds, got {value:g}")
    if not 0 <= hook.retries <= 20:
        raise fail(key + "retries", f"expected 0 to 20, got {hook.retries}")
    if not 1 <= hook.queue_size <= 100000:
        raise fail(key + "queue_size", f"expected 1 to 100000, got {hook.queue_size}")
