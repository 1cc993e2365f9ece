"""What an answered outbound call does first, by the profile's ``answering_machine`` settings.

The agent stays quiet and listens while the detector (sipagent.media.amd) decides, then: a person, or no
verdict by the deadline, gets the conversation (the profile's greeting and instructions); a machine is hung
up on, or, with ``on_machine: leave_message``, gets the profile's message once the beep (or the end of
the greeting) says the recording runs. No I/O: frames and times in, one decision out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sipagent.bridge.context import TemplateError, render
from sipagent.bridge.settings import AnsweringMachineConfig
from sipagent.media.amd import AmdEvent, AmdSettings, AnsweringMachineDetector

Action = Literal["converse", "hang_up", "leave_message"]


def detector_settings(config: AnsweringMachineConfig) -> AmdSettings:
    return AmdSettings(greeting_max_s=config.greeting_max_s, beep=config.beep, timeout_s=config.timeout_s)


@dataclass(frozen=True)
class AnswerDecision:
    action: Action
    verdict: Literal["human", "machine", "unknown"] | None  # None: detection is off for this profile
    at: float  # seconds after the answer
    reason: str = ""
    message: str = ""  # leave_message: the text to speak (rendered), then hang up


class OutboundAnswer:
    """One answered call's first seconds. ``decision`` is set once; feed frames until it is.

    ``variables``: the call's template variables (``CallContext.variables(context.template_defaults)``),
    for the message; ``sample_rate``: of the PCM fed (8000 for G.711, 16000 for G.722)."""

    def __init__(self, config: AnsweringMachineConfig, variables: Mapping[str, str], sample_rate: int = 8000) -> None:
        self.config = config
        self._variables = variables
        self.events: list[AmdEvent] = []  # for the transcript: what the detector heard, and when
        self.decision: AnswerDecision | None = None
        self.detector: AnsweringMachineDetector | None = None
        if config.detect:
            self.detector = AnsweringMachineDetector(detector_settings(config), sample_rate)
        else:
            self.decision = AnswerDecision("converse", None, 0.0, "answering-machine detection off")

    def feed(self, pcm: bytes, at: float) -> AnswerDecision | None:
        """The called party's frame ``at`` seconds after the answer; the decision when this frame made it."""
        if self.decision is not None or self.detector is None:
            return None
        for event in self.detector.feed(pcm, at):
            self.events.append(event)
            decision = self._decide(event)
            if decision is not None:
                self.decision = decision
                return decision
        return None

    def _decide(self, event: AmdEvent) -> AnswerDecision | None:
        if event.kind in ("human", "unknown"):
            return AnswerDecision("converse", event.kind, event.at, event.reason)
        if event.kind == "machine" and self.config.on_machine == "hang_up":
            return AnswerDecision("hang_up", "machine", event.at, event.reason)
        if event.kind == "message":
            return AnswerDecision("leave_message", "machine", event.at, event.reason, self.message())
        return None  # machine, leave_message: wait for the beep or the end of the greeting

    def message(self) -> str:
        """The profile's message with the call's variables (the loader checked the template)."""
        try:
            return render(self.config.message, self._variables)
        except TemplateError:
            return self.config.message
