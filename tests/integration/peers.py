"""Real SIP peers for the integration tests: Kamailio (registrar + proxy) and baresip (a phone).

Every process is started on 127.0.0.1 with fresh ports and its own temporary directory, and is stopped
by its PID (never by name). Nothing here reads outside the repository's tests/ tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
KAMAILIO_CFG = HERE / "peers" / "kamailio.cfg"
LOCALHOST = "127.0.0.1"


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories a non-root PATH often lacks (Kamailio lives there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def missing_binaries(*names: str) -> list[str]:
    """The programs among ``names`` that are not installed."""
    return [name for name in names if find_binary(name) is None]


def require(*binaries: str) -> None:
    """Skip the test with a clear reason when a peer program is not installed."""
    missing = missing_binaries(*binaries)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install with scripts/setup --test)")


def _binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


def _port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                return False
    return True


# Ports handed out by free_port in this process: a peer binds its ports only when it starts (RTP ones
# only when a call starts), so a range handed out earlier may still look free while it is spoken for.
_ISSUED: set[int] = set()


def _unephemeral_ports() -> tuple[int, int]:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return 10000, max(first, 12000)


_UNEPHEMERAL = _unephemeral_ports()
_RANDOM = random.Random(os.getpid() ^ time.time_ns())


def free_port(span: int = 1) -> int:
    """A port ``p`` such that ``p .. p+span-1`` are free for both UDP and TCP on 127.0.0.1, and not
    handed out before by this process.

    Candidates are drawn at random below the kernel's ephemeral range: a peer restarted on its port (a
    registrar restart test) must not find it taken by some process's outgoing connection meanwhile.
    """
    low, high = _UNEPHEMERAL
    for _ in range(200):
        base = _RANDOM.randrange(low, high - span)
        ports = range(base, base + span)
        if base + span < 65536 and _ISSUED.isdisjoint(ports) and all(_port_is_free(p) for p in ports):
            _ISSUED.update(ports)
            return base
    raise RuntimeError("no free port range found on 127.0.0.1")


def sip_options(host: str, port: int, request_uri: str, timeout: float = 1.0) -> int | None:
    """Send one OPTIONS over UDP and return the final status code, or None when nothing answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        sock.settimeout(timeout)
        local_port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        request = (
            f"OPTIONS {request_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOCALHOST}:{local_port};branch=z9hG4bK{call_id[:16]};rport\r\n"
            f"From: <sip:probe@{LOCALHOST}>;tag={call_id[:8]}\r\n"
            f"To: <{request_uri}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(request.encode(), (host, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            status = int(data.split(b" ", 2)[1])
            if status >= 200:
                return status
    return None


def _stop_pid(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process by PID, then SIGKILL it if it does not exit within ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(Path(stat).parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (nobody may reap an orphan in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_with_children(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a forking server by PID and then each of its children: Kamailio's workers hold its sockets, and
    one that outlives the main process keeps the port from the next start."""
    children = _children(proc.pid) if proc.poll() is None else []
    _stop_pid(proc, grace)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in filter(_alive, children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kamailio_module_path() -> str:
    """Where Debian puts Kamailio's modules (the directory name carries the architecture triplet)."""
    found = sorted(glob.glob("/usr/lib/*/kamailio/modules")) + sorted(glob.glob("/usr/lib/kamailio/modules"))
    if not found:
        raise RuntimeError("Kamailio modules directory not found")
    return found[0]


def kamailio_tls_module() -> Path | None:
    """The TLS module (Debian package kamailio-tls-modules), if installed."""
    try:
        path = Path(kamailio_module_path()) / "tls.so"
    except RuntimeError:
        return None
    return path if path.exists() else None


@dataclass
class KamailioTls:
    """What Kamailio presents on its TLS port, and whether it reuses the REGISTER's connection to reach
    the contact (``reuse``) or opens one to the Contact's address (then the agent must listen for TLS)."""

    cert_file: Path
    key_file: Path
    reuse: bool = True
    client_ca: Path | None = None  # ask every client for a certificate issued by this CA (mutual TLS)


class Kamailio:
    """Kamailio registrar/proxy with digest auth (users NNNN, password "secret" + NNNN); also over TLS when
    given ``tls`` (the module must be installed: see kamailio_tls_module)."""

    def __init__(self, workdir: Path, port: int | None = None, min_expires: int = 3,
                 tls: KamailioTls | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.min_expires = min_expires
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kamailio.log"

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"{LOCALHOST}:{self.tls_port}"

    def _write_tls_cfg(self) -> Path:
        assert self.tls is not None
        path = self.workdir / "tls.cfg"
        clients = (["verify_certificate = yes", "require_certificate = yes", f"ca_list = {self.tls.client_ca}"]
                   if self.tls.client_ca else ["verify_certificate = no", "require_certificate = no"])
        path.write_text("\n".join([
            "[server:default]", "method = TLSv1.2+", *clients,
            f"private_key = {self.tls.key_file}", f"certificate = {self.tls.cert_file}", "",
            # Towards a contact that listens for TLS (the agent's own certificate is not checked here).
            "[client:default]", "method = TLSv1.2+", "verify_certificate = no", "require_certificate = no", "",
        ]))
        return path

    def start(self, timeout: float = 15.0) -> None:
        """Start in the foreground (-DD: no daemon, so our PID is the main process) and wait for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "kamailio.cfg"
        text = KAMAILIO_CFG.read_text(encoding="utf-8")
        text = text.replace("@PORT@", str(self.port)).replace("@MIN_EXPIRES@", str(self.min_expires))
        defines: list[str] = []
        if self.tls is not None:
            text = text.replace("@TLS_PORT@", str(self.tls_port)).replace("@TLS_CFG@", str(self._write_tls_cfg()))
            defines = ["-A", "WITH_TLS", *(["-A", "WITH_TLS_REUSE"] if self.tls.reuse else [])]
        cfg.write_text(text)
        log = self.log_path.open("ab")
        cmd = [_binary("kamailio"), "-f", str(cfg), "-DD", "-E", "-L", kamailio_module_path(),
               "-w", str(self.workdir), *defines]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited at start:\n{self.log_tail()}")
            if sip_options(LOCALHOST, self.port, f"sip:{self.address}", timeout=0.3) == 200:
                return
        self.stop()
        raise RuntimeError(f"kamailio did not answer OPTIONS within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_with_children(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: all registrations are forgotten (no database)."""
        self.stop()
        self.start()

    def is_registered(self, user: str) -> bool:
        """True when the proxy can route to ``user`` (lookup succeeds and the contact answers OPTIONS). One
        OPTIONS through two processes (Kamailio, the contact) on a machine that may be loaded: 5 s for the
        answer, which costs nothing when it comes (a user not registered gets Kamailio's 404 at once)."""
        return sip_options(LOCALHOST, self.port, f"sip:{user}@{self.address}", timeout=5.0) == 200

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Polls ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(step)
    return True


@contextlib.contextmanager
def running_kamailio(workdir: Path) -> Iterator[Kamailio]:
    """A started Kamailio, stopped by PID on the way out."""
    server = Kamailio(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_silence_wav(path: Path, seconds: float, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))


@dataclass
class CtrlEvent:
    """One ctrl_tcp event from baresip, e.g. type "CALL_ESTABLISHED"."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


class Baresip:
    """A baresip phone registered as ``user`` on the test Kamailio, driven over its ctrl_tcp socket.

    Its SIP port + 1 is left free because baresip also opens it (for TLS).
    ``codecs`` limits what the account offers and accepts (baresip names: "PCMU", "PCMA", "G722");
    ``record`` loads the sndfile module, which writes what the phone hears (and sends) to WAV files;
    ``mediaenc`` loads the srtp module and sets the account's media encryption ("srtp-mand": SDES keys in
    an RTP/SAVP offer, plain offers and answers refused; "srtp": SRTP offered in RTP/AVP, best effort).
    ``transport`` "tls" registers (and calls) over TLS, trusting the CA in ``ca_file``; ``registrar`` is then
    the registrar's TLS address.
    """

    def __init__(self, workdir: Path, user: str, registrar: str, *, answer: bool = False,
                 codecs: list[str] | None = None, record: bool = False, mediaenc: str | None = None,
                 transport: str = "udp", ca_file: Path | None = None) -> None:
        self.workdir = workdir
        self.user = user
        self.registrar = registrar
        self.transport = transport
        self.ca_file = ca_file
        self.answer = answer
        self.codecs = codecs
        self.record = record
        self.mediaenc = mediaenc
        self.sip_port = free_port(span=2)
        self.ctrl_port = free_port()
        self.rtp_port = free_port(span=10)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "baresip.log"
        self.events: list[CtrlEvent] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._event_added: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.record:
            self.recordings_dir.mkdir(parents=True, exist_ok=True)
        write_silence_wav(self.workdir / "send.wav", 60.0, rate=self.source_rate)
        config = "\n".join([
            "poll_method epoll",
            f"sip_listen {LOCALHOST}:{self.sip_port}",
            f"net_interface {LOCALHOST}",
            f"rtp_ports {self.rtp_port}-{self.rtp_port + 9}",
            f"audio_source aufile,{self.workdir}/send.wav",
            "audio_alert aufile,/dev/null",
            "audio_player aufile,/dev/null",
            "module_path /usr/lib/baresip/modules",
            "module g711.so",
            "module g722.so",
            "module aufile.so",
            *(["module sndfile.so", f"snd_path {self.recordings_dir}"] if self.record else []),
            *(["module srtp.so"] if self.mediaenc else []),
            "module_app account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {LOCALHOST}:{self.ctrl_port}",
            *([f"sip_cafile {self.ca_file}"] if self.ca_file else []),
            "",
        ])
        (self.workdir / "config").write_text(config)
        mode = ";answermode=auto" if self.answer else ""
        if self.mediaenc:
            mode += f";mediaenc={self.mediaenc}"
        if self.codecs:
            # With no rate baresip assumes 8000 Hz, which G.722 (16000 Hz) does not match.
            rates = {"G722": 16000}
            mode += ";audio_codecs=" + ",".join(f"{c}/{rates.get(c, 8000)}/1" for c in self.codecs)
        account = (
            f"<sip:{self.user}@{self.registrar};transport={self.transport}>;auth_pass=secret{self.user};regint=300"
            f"{mode}\n"
        )
        (self.workdir / "accounts").write_text(account)
        (self.workdir / "contacts").write_text("")

    async def start(self, timeout: float = 15.0) -> None:
        """Start baresip, connect to ctrl_tcp and wait for its registration."""
        self._write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [_binary("baresip"), "-f", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self._event_added = asyncio.Event()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baresip exited at start:\n{self.log_tail()}")
            try:
                self._reader, self._writer = await asyncio.open_connection(LOCALHOST, self.ctrl_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"baresip ctrl_tcp not listening:\n{self.log_tail()}") from None
                await asyncio.sleep(0.1)
        self._task = asyncio.create_task(self._read_loop())
        # The first REGISTER may complete before ctrl_tcp accepts us: poll reginfo rather than the event.
        while "OK" not in str((await self.command("reginfo")).get("data", "")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"baresip did not register:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def _read_loop(self) -> None:
        assert self._reader is not None and self._event_added is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
            while True:
                length = int((await self._reader.readuntil(b":"))[:-1])
                payload = await self._reader.readexactly(length + 1)  # netstring: LEN:DATA,
                message: dict[str, Any] = json.loads(payload[:-1])
                if message.get("event"):
                    self.events.append(CtrlEvent(str(message.get("type", "")), message))
                    self._event_added.set()
                elif message.get("response"):
                    fut = self._pending.pop(str(message.get("token", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(message)

    async def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run one baresip command (e.g. "dial", "hangup") and return its JSON response."""
        assert self._writer is not None
        token = uuid.uuid4().hex[:8]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(b"%d:%s," % (len(body), body))
        await self._writer.drain()
        return await asyncio.wait_for(fut, timeout)

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    async def hangup(self) -> None:
        await self.command("hangup")

    async def accept(self) -> None:
        """Answer the ringing incoming call."""
        await self.command("accept")

    async def set_source(self, wav: Path) -> None:
        """Switch the audio source of the current call to ``wav`` (aufile plays it from its start)."""
        await self.command("ausrc", f"aufile,{wav}")

    async def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` on the current call (RFC 4733 telephone-events when negotiated)."""
        await self.command("sndcode", digits)

    @property
    def source_rate(self) -> int:
        """The sample rate WAV sources must have: aufile refuses a file whose rate differs from the
        codec's, and G.722 runs at 16 kHz (offered only when ``codecs`` names it)."""
        return 16000 if self.codecs and "G722" in self.codecs else 8000

    @property
    def recordings_dir(self) -> Path:
        return self.workdir / "heard"

    def recordings(self, kind: str = "dec") -> list[Path]:
        """The sndfile dumps, oldest first: "dec" is what the phone heard, "enc" what it sent."""
        return sorted(self.recordings_dir.glob(f"dump-*-{kind}.wav"), key=lambda path: path.stat().st_mtime)

    def count_events(self, event_type: str) -> int:
        return sum(1 for event in self.events if event.type == event_type)

    async def wait_count(self, event_type: str, count: int, timeout: float) -> bool:
        """True once at least ``count`` events of ``event_type`` arrived; False after ``timeout``."""
        assert self._event_added is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count_events(event_type) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._event_added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_added.wait(), remaining)
        return True

    async def wait_event(self, event_type: str, timeout: float, start: int = 0) -> CtrlEvent | None:
        """The first ``event_type`` event at index >= ``start`` of ``events``; None after ``timeout``."""
        assert self._event_added is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events[start:]:
                if event.type == event_type:
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._event_added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_added.wait(), remaining)

    def event_types(self) -> list[str]:
        return [event.type for event in self.events]

    async def close(self) -> None:
        """Close the control connection and stop the process by PID."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, grace=3.0)
            self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
