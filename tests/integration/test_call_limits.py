"""Every call ends by itself, and what it leaves on disk cannot hurt it: on real calls (agent in direct mode,
our SIP caller, the offline backend over a WebSocket).

- agent.max_call_s: the agent says max_call_message (cutting itself off if it was talking), then BYE.
- media.rtp_timeout_s: a caller whose RTP stops is hung up, but not while the call is on hold.
- Recording faults (a directory that cannot be written, a full disk, a read-only filesystem, the directory
  removed during the call): the file stops, one log line and one count, and the call goes on untouched.
- The greeting is in the transcript with how much of it the caller heard, also when it was cut.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import Rig, bridge_config, call_rig, loud_times

from sipagent.bridge import transcript
from sipagent.bridge.call import CallBridge
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]

LONG_GREETING = ("Thanks for calling Northwind Outfitters. We are open from nine in the morning to five in the "
                 "evening, every day of the week, and we ship to all fifty states. How can I help you today?")
TIME_UP = "Our time is up for this call. Goodbye."


def calls(rig: Rig, outcome: str) -> float:
    value = rig.agent.metrics.registry.get_sample_value("sipagent_calls_total", {"outcome": outcome})
    return value or 0.0


def recording_errors(rig: Rig, kind: str) -> float:
    value = rig.agent.metrics.registry.get_sample_value("sipagent_recording_errors_total", {"kind": kind})
    return value or 0.0


def greeting_entry(rig: Rig) -> dict[str, Any]:
    greetings = [e for e in rig.entries("agent") if e.get("greeting")]
    assert len(greetings) == 1, rig.summary()
    return greetings[0]


# ---------------------------------------------------------------- agent.max_call_s


def test_max_call_s_says_the_message_then_hangs_up(tmp_path: Path) -> None:
    asyncio.run(_max_call_silent(tmp_path))


async def _max_call_silent(tmp_path: Path) -> None:
    config = bridge_config(tmp_path, agent={"max_call_s": 10, "max_call_message": TIME_UP})
    async with call_rig(config) as rig:
        await rig.wait_for(rig.caller.ended.is_set, 30, "the agent to end the call at agent.max_call_s")
        ended = time.monotonic()
        outcome = await rig.wait_outcome()
        assert rig.agent.metrics.calls_active == 0
    assert outcome.reason == "time-limit" and rig.caller.end_reason == "remote-bye", rig.summary()
    (limit,) = rig.entries("event")
    # One sleep to answer + 10 s: late only by the loop's wake-up (a few ms; a stall, 0.2 s); a second late
    # would be a limit counted from somewhere else, or polled.
    assert limit["event"] == "time-limit" and 10.0 <= limit["t"] < 11.0, rig.summary()
    assert [e["text"] for e in rig.entries("agent")] == ["Hello.", TIME_UP], rig.summary()
    said = rig.entries("agent")[1]
    # The BYE came after the message was played, not at the limit.
    heard = loud_times(rig.caller, since=rig.caller.answered_at + limit["t"])
    assert len(heard) * 20 >= 1200, f"only {len(heard) * 20} ms of the message heard\n{rig.summary()}"
    assert ended - heard[-1] < 3.0, rig.summary()
    assert said["t"] <= rig.entries("call")[-1]["t"], rig.summary()
    # The greeting, played to its end.
    greeting = greeting_entry(rig)
    assert greeting["text"] == "Hello." and not greeting["interrupted"], greeting
    assert greeting["heard_ms"] == greeting["total_ms"] > 300, greeting
    assert calls(rig, "time-limit") == 1


def test_max_call_s_cuts_the_agent_off_to_say_the_message(tmp_path: Path) -> None:
    asyncio.run(_max_call_talking(tmp_path))


async def _max_call_talking(tmp_path: Path) -> None:
    # A greeting longer than the limit: the limit interrupts it, and the message still comes.
    config = bridge_config(tmp_path, agent={"greeting": LONG_GREETING, "max_call_s": 10, "max_call_message": TIME_UP})
    async with call_rig(config) as rig:
        await rig.wait_for(rig.caller.ended.is_set, 35, "the agent to end the call at agent.max_call_s")
        outcome = await rig.wait_outcome()
    assert outcome.reason == "time-limit", rig.summary()
    assert [e["text"] for e in rig.entries("agent")][-1] == TIME_UP, rig.summary()
    greeting = greeting_entry(rig)
    (limit,) = rig.entries("event")
    # The offline backend streams in real time: cut at the limit, the greeting's length was not known yet.
    assert greeting["interrupted"] and greeting["total_ms"] is None, greeting
    # What the caller heard of it until (half a second before) the limit, however late it began, was played
    # before the cut; and no more can have played than the time from the answer to the cut.
    loud_ms = 20 * len(loud_times(rig.caller, until=rig.caller.answered_at + limit["t"] - 0.5))
    assert loud_ms >= 2000 and loud_ms <= greeting["heard_ms"] <= greeting["t"] * 1000 + 100, (loud_ms, greeting)
    assert greeting["text"].startswith("Thanks for calling"), greeting  # the model's text, as far as it got
    sent = [e["type"] for e in rig.sent]
    assert sent.index("response.cancel") < len(sent) - 1 - sent[::-1].index("response.create"), sent
    errors = [e["error"] for e in rig.received if e["type"] == "error"]
    assert not errors, errors  # the goodbye waited for the cancelled response to end


# ---------------------------------------------------------------- media.rtp_timeout_s


def stop_caller_media(rig: Rig) -> None:
    """The caller's side goes dead: its endpoint leaves the clock, so it sends no more RTP (SIP stays up)."""
    endpoint = rig.caller._endpoint
    assert endpoint is not None
    rig.clock.unregister(endpoint)


def test_rtp_timeout_hangs_up_a_call_whose_media_stopped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_rtp_timeout(tmp_path, caplog))


async def _rtp_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # idle_timeout_s 0 (bridge_config's): no idle prompt, and still the dead call ends.
    config = bridge_config(tmp_path, media={"rtp_timeout_s": 5})
    assert config.agent.idle_timeout_s == 0
    async with call_rig(config) as rig:
        await rig.agent_turn()
        stop_caller_media(rig)
        stopped = time.monotonic()
        await rig.wait_for(rig.caller.ended.is_set, 15, "the agent to hang up on dead media")
        after = time.monotonic() - stopped
        outcome = await rig.wait_outcome()
        assert rig.agent.metrics.calls_active == 0
    assert outcome.reason == "media-timeout" and rig.caller.end_reason == "remote-bye", rig.summary()
    # rtp_timeout_s after the last packet, plus at most one watch interval (0.83 s) and the BYE. Counted here
    # from the stop, which comes up to a tick after the last packet left (more when the loop stalled just
    # before it, and the watch may have seen that packet before the stop): 5 s less that much.
    assert 4.8 <= after < 7.5, f"hung up {after:.1f} s after the media stopped"
    assert [e["event"] for e in rig.entries("event")] == ["media-timeout"], rig.summary()
    assert calls(rig, "media-timeout") == 1
    lines = [r.getMessage() for r in caplog.records if "media.rtp_timeout_s" in r.getMessage()]
    assert len(lines) == 1 and "NAT" in lines[0] and "direct_media" in lines[0], lines


def test_no_rtp_timeout_while_the_call_is_on_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = [True]
    monkeypatch.setattr(CallBridge, "on_hold", property(lambda self: held[0]))
    asyncio.run(_held(tmp_path, held))


async def _held(tmp_path: Path, held: list[bool]) -> None:
    config = bridge_config(tmp_path, media={"rtp_timeout_s": 5})
    async with call_rig(config) as rig:
        await rig.agent_turn()
        stop_caller_media(rig)  # a held far end may send nothing
        await asyncio.sleep(8)
        assert not rig.caller.ended.is_set() and not rig.outcomes, rig.summary()
        held[0] = False  # resumed, and still no media: the timeout counts from the resume
        resumed = time.monotonic()
        await rig.wait_for(rig.caller.ended.is_set, 15, "the agent to hang up on dead media after the resume")
        after = time.monotonic() - resumed
        outcome = await rig.wait_outcome()
    assert outcome.reason == "media-timeout", rig.summary()
    assert 4.0 <= after < 7.5, f"hung up {after:.1f} s after the resume"


# ---------------------------------------------------------------- the greeting in the transcript


@pytest.mark.parametrize("delivery", ["real-time", "all-at-once"])
def test_an_interrupted_greeting_is_in_the_transcript_with_what_was_heard(tmp_path: Path, delivery: str) -> None:
    asyncio.run(_greeting_cut(tmp_path, delivery))


async def _greeting_cut(tmp_path: Path, delivery: str) -> None:
    config = bridge_config(tmp_path, agent={"greeting": LONG_GREETING,
                                            "barge_in": {"mode": "local", "protect_greeting_ms": 0}})
    backend = None
    if delivery == "all-at-once":
        # Like the real API, which sends a reply's audio much faster than it plays: the greeting's response
        # is complete before the caller cuts in, so its whole length is known.
        backend = LocalRealtimeServer(LocalBrainConfig.from_mapping(config.realtime.local), lead_ms=60_000)
        await backend.start()
        config.realtime.url = backend.url
    try:
        async with call_rig(config) as rig:
            await rig.wait_for(lambda: len(loud_times(rig.caller)) >= 60, 15, "1.2 s of the greeting")
            await rig.say("how do i return an item")
            await rig.wait_entry("agent", 25, lambda e: "thirty days" in e["text"])
    finally:
        if backend is not None:
            await backend.stop()
    (cut,) = rig.entries("barge_in")
    greeting = greeting_entry(rig)
    assert greeting["text"].startswith("Thanks for calling"), greeting
    assert greeting["interrupted"] and greeting["heard_ms"] == cut["heard_ms"] >= 1000, (greeting, cut)
    if delivery == "all-at-once":
        assert greeting["total_ms"] > greeting["heard_ms"] + 5000, greeting  # a greeting of more than 6 s
    else:
        assert greeting["total_ms"] is None, greeting  # cut before the model had sent all of it
    kinds = [e["type"] for e in rig.entries() if e["type"] in ("agent", "barge_in", "caller")]
    assert kinds[:2] == ["barge_in", "agent"], rig.summary()  # written once it had stopped


# ---------------------------------------------------------------- recording faults


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "xb")
        self.room = room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.name))
        self.room -= len(data)
        return super().write(data)


def full_disk(transcript_room: int, audio_room: int) -> Callable[[Path], Any]:
    def open_call_file(path: Path) -> FullDisk:
        path.parent.mkdir(parents=True, exist_ok=True)
        return FullDisk(path, transcript_room if path.suffix == ".jsonl" else audio_room)

    return open_call_file


def read_only_filesystem(path: Path) -> Any:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


FAULTS = ["not-a-directory", "read-only-directory", "disk-full", "read-only-filesystem", "directory-removed"]


@pytest.mark.parametrize("fault", FAULTS)
def test_recording_faults_never_hurt_the_call(tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "records"
    if fault == "not-a-directory":
        (tmp_path / "file").write_text("")
        directory = tmp_path / "file" / "records"  # mkdir fails, even for root
    elif fault == "read-only-directory":
        directory.mkdir()
        directory.chmod(0o555)
        if os.access(directory, os.W_OK):
            pytest.skip("this process writes into a 0555 directory anyway (root); not-a-directory covers the path")
    elif fault == "disk-full":
        # The transcript fills the disk after its first lines, the recording after about a second of audio.
        monkeypatch.setattr(transcript, "open_call_file", full_disk(600, 100_000))
    elif fault == "read-only-filesystem":
        monkeypatch.setattr(transcript, "open_call_file", read_only_filesystem)
    caplog.set_level(logging.INFO)
    try:
        asyncio.run(_faulty_records(tmp_path, directory, fault, caplog))
    finally:
        if directory.exists():
            directory.chmod(0o755)


async def _faulty_records(tmp_path: Path, directory: Path, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    config = bridge_config(tmp_path, recording={"dir": str(directory), "audio": True})
    async with call_rig(config) as rig:
        await rig.agent_turn()
        bridge = rig.bridge  # kept: the transcript lives on in memory when its file fails
        if fault == "directory-removed":
            shutil.rmtree(directory)
        _, asked = await rig.say("where is my order seven seven two one")
        await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
        await rig.agent_turn(quiet_s=0.5, new=False)
        assert rig.agent.clock.streams == 1  # the media clock still serves the agent's side of the call
    outcome = await rig.wait_outcome()
    heard = loud_times(rig.caller, since=asked)
    assert len(heard) * 20 >= 1500, f"only {len(heard) * 20} ms of the answer heard\n{rig.summary()}"
    assert outcome.reason == "remote-hangup", rig.summary()
    assert rig.agent.metrics.calls_active == 0
    assert outcome.transcript_path is None and outcome.recording_path is None, outcome
    assert bridge.transcript is not None and any("shipped" in e.get("text", "") for e in bridge.transcript.entries)
    for kind in ("transcript", "audio"):
        assert recording_errors(rig, kind) == 1, kind
        lines = [r for r in caplog.records if r.getMessage().startswith(f"{kind} ") and "stopped" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "failed on tick" not in messages and "call failed" not in messages, messages
    assert "error handling" not in messages, messages
