"""The local backend's session state machine, without sockets: events in, events and actions out."""

from __future__ import annotations

import json
from typing import Any

from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent
from pydantic import TypeAdapter

from sipagent.realtime import events as ev
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.session import Ids, LocalSession, Respond, Transcribe

MODELS = {"ga": TypeAdapter(GaServerEvent), "beta": TypeAdapter(BetaServerEvent)}
CONFIG = LocalBrainConfig.from_mapping(
    {"intents": [{"name": "bye", "phrases": ["goodbye"], "reply": "Bye.", "tool": {"name": "end_call"}}]}
)


def events_of(outputs: list[Any], dialect: str) -> list[dict[str, Any]]:
    out = [o for o in outputs if isinstance(o, dict)]
    for event in out:
        MODELS[dialect].validate_python(json.loads(json.dumps(event)))
    return out


def test_item_lifecycle_ga() -> None:
    s = LocalSession(CONFIG, Ids("t"))
    added = events_of(s.handle(ev.user_text("hello")), "ga")
    assert [e["type"] for e in added] == ["conversation.item.added", "conversation.item.done"]
    item_id = added[0]["item"]["id"]
    retrieved = events_of(s.handle({"type": "conversation.item.retrieve", "item_id": item_id}), "ga")
    assert retrieved[0]["item"]["id"] == item_id
    err = events_of(s.handle(ev.item_truncate(item_id, 10)), "ga")[0]
    assert err["type"] == "error" and err["error"]["code"] == "invalid_value"  # not assistant audio
    bad_prev = events_of(s.handle({**ev.user_text("x"), "previous_item_id": "nope"}), "ga")[0]
    assert bad_prev["error"]["code"] == "item_not_found"
    again = {"type": "conversation.item.create", "item": {**ev.user_text("x")["item"], "id": item_id}}
    dup = events_of(s.handle(again), "ga")[0]
    assert dup["error"]["code"] == "item_already_exists"


def test_beta_session_update_switches_names() -> None:
    s = LocalSession(CONFIG, Ids("t"))
    updated = events_of(
        s.handle(ev.session_update(ev.SessionSettings(audio_format="g711_alaw"), "beta")), "beta"
    )
    assert s.dialect == "beta" and updated[0]["session"]["input_audio_format"] == "g711_alaw"
    created = events_of(s.handle(ev.message_item("assistant", "earlier reply", "beta")), "beta")
    assert [e["type"] for e in created] == ["conversation.item.created"]
    assert created[0]["item"]["content"][0]["type"] == "text"


def test_response_with_tool_call_then_output() -> None:
    s = LocalSession(CONFIG, Ids("t"))
    s.handle(ev.user_text("goodbye"))
    outs = s.handle(ev.response_create())
    run = next(o.run for o in outs if isinstance(o, Respond))
    assert run.reply.tool is not None and run.reply.tool.name == "end_call"
    call = events_of(run.function_call(run.reply.tool), "ga")
    done_call = next(e for e in call if e["type"] == "response.function_call_arguments.done")
    finished = events_of(run.finish("completed"), "ga")
    assert finished[-1]["response"]["status"] == "completed" and s.response is None
    assert run.finish("completed") == []  # idempotent
    events_of(s.handle(ev.function_call_output(done_call["call_id"], '{"message": "Hanging up."}')), "ga")
    run2 = next(o.run for o in s.handle(ev.response_create()) if isinstance(o, Respond))
    assert run2.reply.text == "Hanging up."


def test_manual_commit_produces_transcription_job() -> None:
    s = LocalSession(CONFIG, Ids("t"))
    s.handle(ev.session_update(ev.SessionSettings(turn_detection=None, transcription_model="m")))
    assert s.handle(ev.audio_append(b"\x00\x00" * 2400)) == []  # 100 ms, no VAD
    outs = s.handle(ev.audio_commit())
    job = next(o for o in outs if isinstance(o, Transcribe))
    assert len(job.pcm24k) == 4800 and not job.respond
    after = events_of(s.transcribed(job.item_id, "goodbye", False), "ga")
    assert after[0]["type"] == "conversation.item.input_audio_transcription.completed"
    assert after[0]["transcript"] == "goodbye"


def _committed_after(texts: list[str]) -> tuple[bytes, list[dict[str, Any]]]:
    """The audio a manual commit takes after these client texts, and the events they caused."""
    s = LocalSession(CONFIG, Ids("t"))
    s.handle(ev.session_update(ev.SessionSettings(turn_detection=None, transcription_model="m")))
    caused = [e for text in texts for e in events_of(s.handle_text(text), "ga")]
    job = next(o for o in s.handle(ev.audio_commit()) if isinstance(o, Transcribe))
    return job.pcm24k, caused


def test_the_agents_append_text_and_any_other_spelling_of_it_append_the_same_audio() -> None:
    pcm = (bytes(range(256)) * 18)[:4608] + b"\xfe\xff" * 96  # 100 ms; its base64 holds "/" and "+"
    agents = ev.audio_append_json(pcm)  # what the agent sends every 20 ms (the backend's quick path)
    audio = json.loads(agents)["audio"]
    assert "/" in audio and "+" in audio
    spellings = [
        agents,
        json.dumps({"type": "input_audio_buffer.append", "audio": audio}),  # spaced
        agents.replace("/", "\\/"),  # an escaped solidus: JSON, not base64, until it is parsed
        '{"audio":"' + audio + '","type":"input_audio_buffer.append"}',
    ]
    for text in spellings:
        assert _committed_after([text, text]) == (pcm + pcm, []), text


def test_an_append_text_that_is_not_json_or_not_base64_is_refused_and_appends_nothing() -> None:
    good = ev.audio_append_json(b"\x01\x00" * 2400)  # 100 ms: the least a commit takes
    control = ev.AUDIO_APPEND_HEAD + "AAAA\x01AAAA" + ev.AUDIO_APPEND_TAIL  # raw control character: not JSON
    not_base64 = ev.AUDIO_APPEND_HEAD + "AAA!" + ev.AUDIO_APPEND_TAIL
    committed, caused = _committed_after([control, not_base64, good])
    assert committed == b"\x01\x00" * 2400
    assert [(e["error"]["code"], e["error"]["param"]) for e in caused] == [
        ("invalid_json", None), ("invalid_value", "audio")]
