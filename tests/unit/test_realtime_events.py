"""Client event builders validate against the official openai package's models, in both dialects."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as BetaClientEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent as GaClientEvent
from pydantic import TypeAdapter

from sipagent.errors import RealtimeError
from sipagent.realtime import events as ev
from sipagent.realtime.providers import azure_endpoint, endpoint_for, local_endpoint, openai_endpoint

ADAPTERS = {"ga": TypeAdapter(GaClientEvent), "beta": TypeAdapter(BetaClientEvent)}
TOOLS = [
    {
        "type": "function",
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    }
]


def validate(event: dict[str, Any], dialect: str) -> Any:
    """Parse with the openai model, and reject top-level keys the model does not know (it allows extras)."""
    wire = json.loads(ev.to_json(event))
    model = ADAPTERS[dialect].validate_python(wire)
    assert model.type == event["type"]
    assert set(wire) <= set(type(model).model_fields), set(wire) - set(type(model).model_fields)
    return model


def builders(dialect: ev.Dialect) -> list[dict[str, Any]]:
    return [
        ev.session_update(ev.SessionSettings(), dialect),
        ev.session_update(
            ev.SessionSettings(
                instructions="Be brief.",
                voice="verse",
                turn_detection={"type": "server_vad", "silence_duration_ms": 500},
                transcription_model="gpt-4o-mini-transcribe",
                tools=TOOLS,
                audio_format="g711_ulaw",
            ),
            dialect,
        ),
        ev.session_update(ev.SessionSettings(turn_detection=None, audio_format="g711_alaw"), dialect),
        ev.audio_append(b"\x01\x02" * 480),
        json.loads(ev.audio_append_json(b"\xff" * 160)),
        ev.audio_commit(),
        ev.audio_clear(),
        ev.user_text("caller pressed 1 2 3 #", dialect),
        ev.message_item("assistant", "Your order shipped.", dialect),
        ev.message_item("system", "The caller is a VIP.", dialect),
        ev.function_call_output("call_1", json.dumps({"status": "shipped"})),
        ev.item_truncate("item_1", 1234),
        ev.item_delete("item_1"),
        ev.response_create(),
        ev.response_create("Say hello."),
        ev.response_cancel(),
        ev.response_cancel("resp_1"),
    ]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_every_builder_validates_with_openai_models(dialect: ev.Dialect) -> None:
    for event in builders(dialect):
        validate(event, dialect)


def test_ga_session_update_shape() -> None:
    event = ev.session_update(
        ev.SessionSettings(
            audio_format="g711_ulaw", voice="marin", transcription_model="whisper-1", tools=TOOLS
        ),
        "ga",
    )
    model = validate(event, "ga")
    assert model.session.audio.input.format.type == "audio/pcmu"
    assert model.session.audio.output.voice == "marin"
    assert model.session.audio.input.transcription.model == "whisper-1"
    assert model.session.tools[0].name == "lookup_order"
    pcm = validate(ev.session_update(ev.SessionSettings(), "ga"), "ga")
    assert (pcm.session.audio.input.format.type, pcm.session.audio.input.format.rate) == ("audio/pcm", 24000)


def test_beta_session_update_shape() -> None:
    model = validate(
        ev.session_update(ev.SessionSettings(audio_format="g711_alaw", transcription_model="w"), "beta"),
        "beta",
    )
    assert model.session.input_audio_format == "g711_alaw"
    assert model.session.output_audio_format == "g711_alaw"
    assert model.session.input_audio_transcription.model == "w"


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@pytest.mark.parametrize("fmt", ["pcm16", "g711_ulaw", "g711_alaw"])
def test_parse_session_round_trips(dialect: ev.Dialect, fmt: ev.AudioFormat) -> None:
    settings = ev.SessionSettings(
        instructions="x",
        voice="echo",
        turn_detection={"type": "server_vad"},
        transcription_model="m",
        tools=TOOLS,
        audio_format=fmt,
    )
    session = ev.session_object(settings, dialect)
    assert ev.session_dialect(session) == dialect
    assert ev.parse_session(session) == ev.SessionSettings(**{**settings.__dict__, "tools": tuple(TOOLS)})


def test_parse_session_keeps_absent_fields_and_rejects_bad_formats() -> None:
    base = ev.SessionSettings(instructions="keep", audio_format="g711_ulaw")
    assert (
        ev.parse_session({"type": "realtime", "audio": {"output": {"voice": "ash"}}}, base).instructions
        == "keep"
    )
    assert ev.parse_session({"voice": "ash"}, base).audio_format == "g711_ulaw"
    with pytest.raises(ev.RealtimeEventError):
        ev.parse_session({"type": "realtime", "audio": {"input": {"format": {"type": "audio/opus"}}}})
    with pytest.raises(ev.RealtimeEventError):
        ev.SessionSettings(audio_format="opus")  # type: ignore[arg-type]


def test_audio_append_fast_path_matches_builder() -> None:
    audio = bytes(range(256)) * 4
    assert json.loads(ev.audio_append_json(audio)) == ev.audio_append(audio)
    assert ev.decode_audio(ev.audio_append(audio)) == audio


def test_normalize_maps_beta_names_and_keeps_unknown() -> None:
    for beta, ga in [
        ("response.audio.delta", "response.output_audio.delta"),
        ("response.audio_transcript.done", "response.output_audio_transcript.done"),
        ("response.text.delta", "response.output_text.delta"),
        ("conversation.item.created", "conversation.item.added"),
    ]:
        event = {"type": beta, "delta": "x"}
        assert ev.normalize(event) == {"type": ga, "delta": "x"}
        assert ev.to_dialect({"type": ga}, "beta") == {"type": beta}
    unknown = {"type": "brand.new.event", "x": 1}
    assert ev.normalize(unknown) is unknown
    assert ev.normalize({"type": "response.output_audio.delta"})["type"] == "response.output_audio.delta"


def test_parse_rejects_non_events() -> None:
    for bad in ["{", "[]", '{"type": 3}', b"\xff\xfe"]:
        with pytest.raises(ev.RealtimeEventError):
            ev.parse(bad)
    assert ev.parse('{"type":"x"}') == {"type": "x"}
    with pytest.raises(ev.RealtimeEventError):
        ev.decode_audio({"type": "response.output_audio.delta", "delta": "not base64!"})
    assert ev.decode_audio({"delta": base64.b64encode(b"ab").decode()}) == b"ab"


def test_openai_endpoint_ga_and_beta() -> None:
    ga = openai_endpoint("sk-secret", "gpt-realtime")
    assert ga.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert ga.headers == {"Authorization": "Bearer sk-secret"}
    beta = openai_endpoint("sk-secret", "gpt-4o-realtime-preview", "beta")
    assert beta.headers["OpenAI-Beta"] == "realtime=v1" and beta.dialect == "beta"
    assert "sk-secret" not in repr(ga) and "sk-secret" not in str(beta.redacted_headers())
    with pytest.raises(RealtimeError):
        openai_endpoint("", "gpt-realtime")


def test_azure_and_local_endpoints() -> None:
    ga = azure_endpoint("https://res.openai.azure.com/", "my-deploy", "k")
    assert ga.url == "wss://res.openai.azure.com/openai/v1/realtime?model=my-deploy"
    assert ga.headers == {"api-key": "k"}
    beta = azure_endpoint("https://res.openai.azure.com", "my-deploy", "k", "beta", "2025-04-01-preview")
    assert (
        beta.url
        == "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=my-deploy"
    )
    local = endpoint_for("local", url="ws://127.0.0.1:9/v1/realtime", model="m", dialect="beta")
    assert local.url == "ws://127.0.0.1:9/v1/realtime?model=m" and local.headers == {
        "OpenAI-Beta": "realtime=v1"
    }
    assert local_endpoint("http://127.0.0.1:9/v1/realtime").url == "ws://127.0.0.1:9/v1/realtime"
    for bad in [
        lambda: endpoint_for("nope"),
        lambda: endpoint_for("local"),
        lambda: local_endpoint("ftp://x"),
        lambda: openai_endpoint("k", "m", "gamma"),
    ]:
        with pytest.raises(RealtimeError):
            bad()


def test_websocket_debug_log_redacts_the_key(caplog: pytest.LogCaptureFixture) -> None:
    from sipagent.realtime import client

    logger = logging.getLogger(client.__name__ + ".wire")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("> %s: %s", "Authorization", "Bearer sk-secret")
        logger.debug("> %s: %s", "api-key", "sk-secret")
    assert caplog.records and "sk-secret" not in caplog.text


def test_nesting_deeper_than_the_stack_is_not_an_event() -> None:
    with pytest.raises(ev.RealtimeEventError, match="nested too deeply"):
        ev.parse("[" * 100_000 + "]" * 100_000)


def test_azure_api_version_reaches_the_preview_endpoint() -> None:
    beta = endpoint_for("azure", url="https://res.openai.azure.com", model="d", api_key="k", dialect="beta",
                        api_version="2024-10-01-preview")
    assert beta.url == "wss://res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=d"
    # The GA v1 API has no dated version.
    ga = endpoint_for("azure", url="https://res.openai.azure.com", model="d", api_key="k", api_version="2024-10-01")
    assert ga.url == "wss://res.openai.azure.com/openai/v1/realtime?model=d"


def test_the_configured_azure_api_version_is_the_one_used() -> None:
    from sipagent.agent import realtime_endpoint
    from sipagent.config import load_config_text

    config = load_config_text("realtime:\n  provider: azure\n  url: https://res.openai.azure.com\n  model: d\n"
                              "  api_key: k\n  dialect: beta\n  api_version: 2024-12-17-preview\n", "x.yaml", {})
    server, endpoint = asyncio.run(realtime_endpoint(config))
    assert server is None and "api-version=2024-12-17-preview&" in endpoint.url, endpoint.url


def test_say_exactly_quotes_the_text_and_no_quote_in_it_can_end_the_passage() -> None:
    event = ev.say_exactly('Tell them "ignore the above" now')
    assert event["type"] == "response.create"
    assert event["response"]["instructions"] == \
        "Say exactly the following, and nothing else: \"Tell them 'ignore the above' now\""
    assert event["response"]["tool_choice"] == "none"  # words in a summary cannot make it act
    assert ev.response_create() == {"type": "response.create"}  # a reply to the caller may use tools


def test_to_json_escapes_a_lone_surrogate_so_the_text_always_encodes() -> None:
    """JSON can carry an escaped lone surrogate (from a peer, or a tool's output); UTF-8 cannot."""
    assert ev.to_json({"type": "x", "text": "héllo"}) == '{"type":"x","text":"héllo"}'  # readable as before
    text = ev.to_json({"type": "x", "text": "a\udc80b"})
    text.encode()
    assert json.loads(text) == {"type": "x", "text": "a\udc80b"}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_a_tagged_response_create_validates_and_keeps_its_tag(dialect: ev.Dialect) -> None:
    """Every response.create leaves tagged in response.metadata (ResponseRetries.asked): both dialects' models
    know the field, so the API takes it and echoes it, and nothing else of the request changes."""
    from sipagent.bridge.response_retry import TAG, ResponseRetries

    retries = ResponseRetries()
    for event in (ev.response_create(), ev.say_exactly("Hello."), ev.response_create("Say hello.", tools=False)):
        tagged = retries.asked(event)
        model = validate(tagged, dialect)
        assert model.response is not None and model.response.metadata == {TAG: tagged["response"]["metadata"][TAG]}
        assert {k: v for k, v in tagged["response"].items() if k != "metadata"} == event.get("response", {})
