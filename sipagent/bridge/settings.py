"""What the bridge needs to know about the agent's behaviour, as typed settings.

These dataclasses are the schema of the YAML sections ``agent`` and ``recording``: sipagent.config
validates a file into them, the bridge reads them. They live here so that the bridge, a lower layer,
never imports the configuration loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BUILTIN_TOOLS = frozenset({"end_call", "transfer_call", "collect_digits", "send_dtmf"})
DEFAULT_PROFILE = "default"  # the name of the profile the ``agent:`` section describes


@dataclass
class BargeInConfig:
    mode: Literal["server", "local", "off"] = "server"
    min_speech_ms: int = 200  # confirms a barge-in (local mode): the model is told, the item truncated
    protect_greeting_ms: int = 1000
    threshold_db: float = -35.0
    # The reversible first stage: this much loud caller audio (above the agent's echo) ducks or pauses the
    # agent's audio at once; 0 turns the first stage off. One 20 ms frame: a caller who talks over the agent
    # is heard as it starts, and the echo margin, not the frame count, is what keeps the agent's echo out.
    pause_after_ms: int = 20
    # duck: the agent plays on turned down by duck_db (a cough costs only the frames it overlapped);
    # pause: the agent's audio is held, silent, and goes on from the same word on resume.
    stage1: Literal["duck", "pause"] = "duck"
    duck_db: float = 30.0
    unduck_after_ms: int = 40  # a duck on a short burst (a cough) ends once the caller was quiet this long
    # a pause not confirmed as speech resumes once the caller was quiet this long (a duck after a loud run
    # longer than a burst, too)
    resume_after_ms: int = 300


@dataclass
class ToolConfig:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str = ""
    method: Literal["GET", "POST", "PUT"] = "POST"
    timeout_s: float = 5.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class DtmfConfig:
    """Keypad entry (``collect_digits``) and keys sent (``send_dtmf``); the model may narrow the entry's
    rules per call within fixed bounds (sipagent.bridge.digits), never widen ``max_wait_s``."""

    terminator: str = "#"  # "#", "*" or "" (none): the key that ends an entry
    max_digits: int = 16
    first_digit_timeout_s: float = 10.0  # from the end of the agent's prompt
    inter_digit_timeout_s: float = 5.0
    max_wait_s: float = 60.0  # the whole entry, from the tool call
    tone_ms: int = 100  # how long each key sent by send_dtmf lasts (RFC 4733 event duration)
    send_keys: str = "0123456789*#ABCD"  # the keys send_dtmf may send (fewer: no PBX feature codes, e.g. #1)


@dataclass
class FailureConfig:
    action: Literal["hangup", "transfer"] = "hangup"
    message: str = "Sorry, our assistant is unavailable right now. Please call again later."
    target: str = ""


@dataclass
class AnsweringMachineConfig:
    """What an outbound call does when a machine answers (sipagent.media.amd decides; inbound calls never
    run the detector). ``message`` is a template of the call's context, spoken after the beep (or after the
    greeting ends when there is no beep) when ``on_machine`` is leave_message."""

    detect: bool = True
    on_machine: Literal["hang_up", "leave_message"] = "hang_up"
    message: str = ""
    greeting_max_s: float = 3.5  # uninterrupted speech longer than this after the answer: a machine
    beep: bool = True  # a steady tone (400-2000 Hz, >= 150 ms) marks a machine and the moment to speak
    timeout_s: float = 6.0  # no verdict by then: "unknown", and the call goes on as with a person


TransferMode = Literal["blind", "warm"]
TRANSFER_MODES = ("blind", "warm")


@dataclass
class TransferConfig:
    """How ``transfer_call`` puts a caller through (the profile's ``transfer`` section).

    blind: a REFER to the target, and the caller is gone. warm: the caller hears ``hold_message`` and then
    hold audio while the agent calls the target as a second call, briefs the person who answers, and joins
    the two (sipagent.bridge.warm)."""

    mode: TransferMode = "blind"  # every target's mode ...
    modes: dict[str, TransferMode] = field(default_factory=dict)  # ... unless named here ("default": the desk)
    hold_message: str = "Please hold while I connect you."
    # "tone" (a soft beep every few seconds), "silence", or the path of a WAV file (PCM16, mono) played in a loop
    hold_audio: str = "tone"
    ring_timeout_s: float = 20.0  # how long the human's phone may ring before the caller is taken back
    briefing_limit_s: float = 20.0  # the briefing is cut after this long (the model's audio to the human)

    def mode_of(self, name: str) -> TransferMode:
        """The mode of the target the model named ("" or None: the default desk)."""
        return self.modes.get(name or "default", self.mode)


@dataclass
class AgentConfig:
    greeting: str = ""
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    tools: list[ToolConfig] = field(default_factory=list)
    # Where transfer_call may send a caller: the model names one of ``transfer_targets`` (it is offered
    # those names and nothing else) or none, which means ``transfer_target``. Never a number of its own.
    transfer_target: str = ""
    transfer_targets: dict[str, str] = field(default_factory=dict)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    idle_timeout_s: float = 20.0
    max_call_s: float = 3600.0  # a call this long is ended politely (max_call_message, then BYE); 0 = no limit
    max_call_message: str = "We have reached the time limit for this call. Thank you for calling. Goodbye."
    idle_prompt: str = "Are you still there?"
    goodbye: str = "Thank you for calling. Goodbye."
    shutdown_grace_s: float = 30.0
    on_failure: FailureConfig = field(default_factory=FailureConfig)
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    # The caller's language as an ISO-639-1 code ("en", "de"): a hint for the Realtime transcription of the
    # caller; "" lets the model detect it.
    language: str = ""
    answering_machine: AnsweringMachineConfig = field(default_factory=AnsweringMachineConfig)

    def transfer_uri(self, name: str | None) -> str | None:
        """The URI the model's transfer ``name`` stands for (no name: the default desk); None if unknown."""
        if not name:
            return self.transfer_target or None
        return self.transfer_targets.get(name)


@dataclass
class AgentProfile(AgentConfig):
    """One agent a call can be answered by: the ``agent`` section's keys plus what the ``realtime`` section
    holds for the default agent (instructions, voice). The ``agent:`` section with ``realtime.instructions``
    and ``realtime.voice`` is the profile named ``default``; each entry of ``agents:`` is a named one that
    takes every key it does not set from the default (sipagent.config resolves that)."""

    name: str = DEFAULT_PROFILE
    instructions: str = ""
    voice: str = "alloy"


@dataclass
class RecordingConfig:
    dir: str = "recordings"
    transcripts: bool = True
    audio: bool = False
    keep_days: float = 0.0  # calls' files older than this are deleted (bridge/retention.py); 0: kept for good


CALL_EVENT_TYPES = ("call.started", "call.transferred", "call.ended")


@dataclass
class EventWebhookConfig:
    """Where call events are posted (``events.webhook``), signed with ``secret``; see docs/configuration.md."""

    url: str
    secret: str = ""
    events: list[str] = field(default_factory=lambda: list(CALL_EVENT_TYPES))
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0  # one attempt, DNS to the last byte of the answer
    retries: int = 5  # attempts after the first one; 0 = never retry
    backoff_s: float = 1.0  # the first retry's delay, doubled each time (up to MAX_BACKOFF_S)
    retry_window_s: float = 300.0  # no attempt starts later than this after the event was queued
    queue_size: int = 1000  # events held at once (waiting, in flight or waiting for a retry); more are dropped
    shutdown_flush_s: float = 3.0  # on shutdown, how long pending events may still be sent


@dataclass
class EventsConfig:
    webhook: EventWebhookConfig | None = None  # None: no call events (the default)
