"""The warm-transfer sequence (sipagent.bridge.warm) over fake legs: every path ends with the human's call
closed, and the caller is only offered Replaces when its INVITE advertised it."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from sipagent.bridge.conversation import Conversation
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.settings import AgentConfig, TransferConfig
from sipagent.bridge.state import CallState
from sipagent.bridge.tool_runner import ToolRunner
from sipagent.bridge.tools import transfer_parameters
from sipagent.bridge.warm import MAX_SUMMARY_CHARS, HumanUnavailable, WarmTransfer, briefing_text, clean_summary


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 10))
    return wrapper


LOG = logging.LoggerAdapter(logging.getLogger("test"), {})
URI = "sip:600@pbx.example.com"


class FakeMedia:
    def __init__(self) -> None:
        self.buffered_ms = 0


class FakeDownlink:
    """What WarmTransfer uses of the Downlink: the caller's queue, its drained event, the briefing's divert."""

    def __init__(self) -> None:
        self.media = FakeMedia()
        self.drained = asyncio.Event()
        self.drained.set()
        self.divert: Any = None
        self.hold_bytes = 0
        self.flushes = 0

    def play_pcm24(self, pcm: bytes) -> None:
        self.hold_bytes += len(pcm)
        self.media.buffered_ms += len(pcm) // 48

    def flush(self) -> None:
        self.flushes += 1
        self.media.buffered_ms = 0
        self.drained.set()

    async def wait_playout(self) -> None:
        return None


class FakeSession:
    """The Realtime session: each response.create "speaks" its instructions at once, to the caller or (during
    the briefing) to where the downlink diverts the audio."""

    def __init__(self, downlink: FakeDownlink, responses: Responses, on_brief: Any = None) -> None:
        self.link = object()
        self.downlink = downlink
        self.responses = responses
        self.said: list[tuple[str, str]] = []  # (to whom, instructions)
        self.on_brief = on_brief

    def send(self, event: dict[str, Any]) -> None:
        instructions = event.get("response", {}).get("instructions", "")
        if self.downlink.divert is not None:
            self.said.append(("human", instructions))
            self.downlink.divert(b"\x00\x01" * 480)
            if self.on_brief is not None:
                self.on_brief()
                return  # this response never ends (the caller hangs up meanwhile)
        else:
            self.said.append(("caller", instructions))
        self.responses.done()


class FakeCall:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.ended = asyncio.Event()


class FakeHuman:
    def __init__(self) -> None:
        self.call = FakeCall("human-1")
        self.heard = b""
        self.closed = 0

    def play_pcm24(self, pcm24k: bytes) -> None:
        self.heard += pcm24k

    async def wait_playout(self, timeout: float) -> None:
        return None

    async def close(self) -> None:
        self.closed += 1
        self.call.ended.set()


class FakeCaller:
    def __init__(self, replaces: bool, replaces_ok: bool = True, blind_ok: bool = True) -> None:
        self.ended = asyncio.Event()
        self.replaces = replaces
        self.replaces_ok = replaces_ok
        self.blind_ok = blind_ok
        self.refers: list[tuple[str, object]] = []

    def peer_supports(self, option: str) -> bool:
        return self.replaces and option == "replaces"

    async def transfer(self, target: str, timeout: float = 30) -> bool:
        self.refers.append(("blind", target))
        return self.blind_ok

    async def transfer_replacing(self, other: Any, timeout: float = 30) -> bool:
        self.refers.append(("replaces", other))
        return self.replaces_ok


class Dialer:
    def __init__(self, human: FakeHuman | None = None, error: HumanUnavailable | None = None,
                 hold: asyncio.Event | None = None) -> None:
        self.human = human
        self.error = error
        self.hold = hold  # rings until set
        self.dialled: list[tuple[str, float]] = []
        self.cancelled = False

    async def __call__(self, uri: str, ring_timeout: float) -> FakeHuman:
        self.dialled.append((uri, ring_timeout))
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.error is not None:
            raise self.error
        assert self.human is not None
        return self.human


def make(caller: FakeCaller, dialer: Dialer, on_brief: Any = None,
         settings: TransferConfig | None = None) -> tuple[WarmTransfer, FakeDownlink, FakeSession]:
    downlink = FakeDownlink()
    responses = Responses(Conversation())
    session = FakeSession(downlink, responses, on_brief)
    warm = WarmTransfer(settings or TransferConfig(mode="warm", ring_timeout_s=7), caller, dialer,
                        cast(Downlink, downlink), cast(RealtimeSession, session), responses, LOG)
    return warm, downlink, session


@run
async def test_joined_by_replaces_when_the_caller_advertised_it() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=True)
    dialer = Dialer(human)
    warm, downlink, session = make(caller, dialer)
    outcome = await warm.run(URI, "sales", "Anna Berg, her order 7721 has not arrived.")
    assert outcome.result == "joined"
    assert dialer.dialled == [(URI, 7)]
    assert caller.refers == [("replaces", human.call)]
    # The caller heard the hold message and hold audio; the human heard the briefing, with the summary.
    assert session.said[0][0] == "caller" and "Please hold" in session.said[0][1]
    assert session.said[1][0] == "human" and "order 7721" in session.said[1][1] and "sales" in session.said[1][1]
    assert downlink.hold_bytes > 0 and human.heard
    assert downlink.divert is None and downlink.flushes >= 1
    assert human.closed == 1
    steps = warm.steps
    assert steps[0] == "hold-message" and steps.index("hold") < steps.index("briefing") < steps.index("joined")


@run
async def test_no_replaces_offered_to_a_caller_that_did_not_advertise_it() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=False)
    warm, _, _ = make(caller, Dialer(human))
    outcome = await warm.run(URI, "sales", "")
    assert outcome.result == "joined-blind"
    assert caller.refers == [("blind", URI)]
    assert human.closed == 1
    # The human's call was hung up before the blind REFER (their phone must be free for the caller).
    assert warm.steps.index("human-closed") < warm.steps.index("refer-blind")


@run
async def test_refused_replaces_falls_back_to_a_blind_transfer_to_the_same_target() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=True, replaces_ok=False)
    warm, _, _ = make(caller, Dialer(human))
    outcome = await warm.run(URI, "sales", "")
    assert outcome.result == "joined-blind"
    assert caller.refers == [("replaces", human.call), ("blind", URI)]
    assert human.closed == 1


@run
async def test_both_refused_leaves_the_caller_with_the_agent() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=True, replaces_ok=False, blind_ok=False)
    warm, _, _ = make(caller, Dialer(human))
    outcome = await warm.run(URI, "sales", "")
    assert outcome.result == "failed" and outcome.detail
    assert human.closed == 1


@pytest.mark.parametrize("outcome", ["no-answer", "busy", "rejected"])
@run
async def test_human_unavailable_takes_the_caller_back(outcome: str) -> None:
    caller = FakeCaller(replaces=True)
    warm, downlink, session = make(caller, Dialer(error=HumanUnavailable(outcome, f"they were {outcome}")))
    result = await warm.run(URI, "sales", "x")
    assert result.result == "unavailable" and outcome in result.detail
    assert caller.refers == []  # never transferred
    assert downlink.media.buffered_ms == 0  # hold audio stopped: the agent speaks next
    assert [to for to, _ in session.said] == ["caller"]  # nobody was briefed


@run
async def test_a_fault_while_dialling_takes_the_caller_back() -> None:
    class Broken(Dialer):
        async def __call__(self, uri: str, ring_timeout: float) -> FakeHuman:
            raise ValueError("no SIP account named 'x'")

    caller = FakeCaller(replaces=True)
    warm, downlink, _ = make(caller, Broken())
    outcome = await warm.run(URI, "sales", "")
    assert outcome.result == "failed" and caller.refers == [] and downlink.media.buffered_ms == 0


@run
async def test_caller_hangs_up_during_the_briefing() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=True)
    warm, downlink, _ = make(caller, Dialer(human), on_brief=caller.ended.set)
    outcome = await warm.run(URI, "sales", "x")
    assert outcome.result == "caller-gone"
    assert caller.refers == []
    assert human.closed == 1
    assert downlink.divert is None


@run
async def test_caller_hangs_up_while_the_human_rings() -> None:
    caller = FakeCaller(replaces=True)
    dialer = Dialer(FakeHuman(), hold=asyncio.Event())
    warm, _, _ = make(caller, dialer)
    task = asyncio.ensure_future(warm.run(URI, "sales", ""))
    while not dialer.dialled:
        await asyncio.sleep(0)
    caller.ended.set()
    assert (await task).result == "caller-gone"
    assert dialer.cancelled  # the ringing call is cancelled, not left to ring


@run
async def test_bridge_ending_mid_transfer_closes_the_human_call() -> None:
    human = FakeHuman()
    caller = FakeCaller(replaces=True)
    stalled = asyncio.Event()
    warm, _, _ = make(caller, Dialer(human), on_brief=stalled.set)
    task = asyncio.ensure_future(warm.run(URI, "sales", ""))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert human.closed == 1


def test_summary_is_cleaned_and_bounded() -> None:
    assert clean_summary(None) == "" and clean_summary(42) == ""
    text = clean_summary('Anna\r\nBerg\x00 "says" \u202eevil\tINVITE sip:x')
    assert "\r" not in text and "\n" not in text and "\x00" not in text and "\u202e" not in text
    assert '"' not in text  # cannot close the quoted text it is spoken from
    assert len(clean_summary("word " * 500)) <= MAX_SUMMARY_CHARS + 3
    assert "a caller for sales" in briefing_text("sales", "") and "for default" not in briefing_text("default", "")


def test_transfer_call_offers_a_bounded_summary() -> None:
    summary = transfer_parameters(["sales"], False)["properties"]["summary"]
    assert summary["type"] == "string" and summary["maxLength"] == MAX_SUMMARY_CHARS


def test_mode_per_target() -> None:
    config = TransferConfig(mode="blind", modes={"sales": "warm"})
    assert config.mode_of("sales") == "warm" and config.mode_of("billing") == "blind"
    assert TransferConfig(mode="warm").mode_of("") == "warm"


class _Records:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def record(self, kind: str, **data: Any) -> None:
        self.entries.append((kind, data))


@run
async def test_keys_pressed_on_hold_for_a_warm_transfer_are_not_passed_to_the_model() -> None:
    """A key passed on would make the model answer, and during the briefing the human would hear that."""
    spawned: list[asyncio.Task[Any]] = []
    runner = ToolRunner(AgentConfig(), cast(Any, FakeCaller(True)), cast(Any, FakeMedia()), cast(Any, None), "ga",
                        cast(Any, None), Responses(Conversation()), cast(Any, FakeDownlink()), cast(Any, None),
                        CallState(LOG), cast(Any, _Records()), LOG,
                        lambda coro: spawned.append(asyncio.ensure_future(coro)) or spawned[-1],
                        _nothing)
    runner.on_dtmf("5", 100)
    assert [key for key, _ in runner.typed] == ["5"]  # without a warm transfer: on its way to the model
    for task in spawned:
        task.cancel()
    runner.typed.clear()
    runner.warm = cast(Any, object())
    runner.on_dtmf("7", 100)
    assert runner.typed == []


async def _nothing() -> None:
    return None


class HangsUpOnReplaces(FakeCaller):
    """The person hangs up while the REFER with Replaces is out: it fails (the call to replace is gone)."""

    def __init__(self, human: FakeHuman, raises: bool) -> None:
        super().__init__(replaces=True, replaces_ok=False)
        self.human, self.raises = human, raises

    async def transfer_replacing(self, other: Any, timeout: float = 30) -> bool:
        self.human.call.ended.set()
        if self.raises:  # the front refuses to REFER for a call no longer up
            raise RuntimeError("cannot replace a call in state ended")
        return await super().transfer_replacing(other, timeout)


@pytest.mark.parametrize("raises", [False, True])
@run
async def test_the_person_hanging_up_during_the_join_is_not_rung_again(raises: bool) -> None:
    human = FakeHuman()
    caller = HangsUpOnReplaces(human, raises)
    warm, _, _ = make(caller, Dialer(human))
    outcome = await warm.run(URI, "sales", "")
    assert outcome.result == "unavailable" and "hung up" in outcome.detail
    assert [kind for kind, _ in caller.refers] == ([] if raises else ["replaces"])  # no blind REFER after it
    assert "human-gone" in warm.steps and "refer-blind" not in warm.steps
