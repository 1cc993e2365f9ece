"""Metrics: each typed method moves the series it names, in its own registry."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sipagent.observability.metrics import CALL_OUTCOMES, CONTENT_TYPE, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def test_registration_state_is_one_hot() -> None:
    m = Metrics()
    m.set_registration_state("registering")
    m.set_registration_state("registered")
    assert value(m, "sipagent_registration_state", account="", state="registered") == 1
    assert value(m, "sipagent_registration_state", account="", state="registering") == 0
    m.set_registration_state("some-new-state")
    assert value(m, "sipagent_registration_state", account="", state="some-new-state") == 1
    assert value(m, "sipagent_registration_state", account="", state="registered") == 0
    m.registration_failed("403")
    m.registration_failed("403")
    m.registration_failed("")
    assert value(m, "sipagent_registration_failures_total", account="", reason="403") == 2
    assert value(m, "sipagent_registration_failures_total", account="", reason="unknown") == 1


def test_registration_state_and_failures_per_account() -> None:
    m = Metrics()
    m.set_registration_state("registered", "sales")
    m.set_registration_state("backing-off", "support")
    m.registration_failed("timeout", "support", 3)
    assert value(m, "sipagent_registration_state", account="sales", state="registered") == 1
    assert value(m, "sipagent_registration_state", account="sales", state="backing-off") == 0
    assert value(m, "sipagent_registration_state", account="support", state="backing-off") == 1
    assert value(m, "sipagent_registration_state", account="support", state="registered") == 0
    assert value(m, "sipagent_registration_failures_total", account="support", reason="timeout") == 3
    m.call_profile("sales", "7001")
    m.call_profile("default")
    assert value(m, "sipagent_profile_calls_total", profile="sales", account="7001") == 1
    assert value(m, "sipagent_profile_calls_total", profile="default", account="") == 1


def test_calls_active_total_and_duration() -> None:
    m = Metrics()
    m.call_started()
    m.call_started()
    assert value(m, "sipagent_calls_active") == 2
    m.call_ended("remote-hangup", 42.0)
    m.call_counted("rejected-busy")
    m.call_ended("not-an-outcome")      # counted as error, never raises
    m.call_ended("answered")            # one end too many: active stays at 0
    assert value(m, "sipagent_calls_active") == 0
    assert m.calls_active == 0
    assert value(m, "sipagent_calls_total", outcome="remote-hangup") == 1
    assert value(m, "sipagent_calls_total", outcome="rejected-busy") == 1
    assert value(m, "sipagent_calls_total", outcome="error") == 1
    assert value(m, "sipagent_calls_total", outcome="transferred") == 0  # pre-created
    assert value(m, "sipagent_call_duration_seconds_count") == 1
    assert value(m, "sipagent_call_duration_seconds_sum") == 42.0
    assert set(CALL_OUTCOMES) >= {"answered", "failover-transferred", "rejected-codec", "cancelled"}


def test_latency_histograms_cover_10ms_to_5s() -> None:
    m = Metrics()
    m.observe_turn_latency(0.012)
    m.observe_turn_latency(0.8)
    m.observe_barge_in_latency(0.15)
    m.observe_turn_latency(-1.0)        # ignored
    assert value(m, "sipagent_turn_latency_seconds_count") == 2
    assert value(m, "sipagent_turn_latency_seconds_bucket", le="0.01") == 0
    assert value(m, "sipagent_turn_latency_seconds_bucket", le="0.02") == 1
    assert value(m, "sipagent_turn_latency_seconds_bucket", le="5.0") == 2
    assert value(m, "sipagent_barge_in_latency_seconds_bucket", le="0.1") == 0
    assert value(m, "sipagent_barge_in_latency_seconds_bucket", le="0.15") == 1


def test_media_realtime_tools_tokens() -> None:
    m = Metrics()
    m.add_rtp(sent=100, received=98, lost=2)
    m.add_rtp(sent=50, lost=-1)             # negative RFC 3550 loss is not subtracted
    m.add_late_ticks(3)
    m.observe_jitter(0.004)
    m.realtime_reconnected()
    m.realtime_error("rate_limit_exceeded")
    m.realtime_error("x" * 500)
    m.tool_called("lookup_order", "ok")
    m.tool_called("lookup_order", "timeout")
    m.tokens_used(input_tokens=120, output_tokens=30)
    m.set_loop_lag(0.25)
    assert value(m, "sipagent_rtp_packets_sent_total") == 150
    assert value(m, "sipagent_rtp_packets_received_total") == 98
    assert value(m, "sipagent_rtp_packets_lost_total") == 2
    assert value(m, "sipagent_media_late_ticks_total") == 3
    assert value(m, "sipagent_rtp_jitter_seconds_count") == 1
    assert value(m, "sipagent_realtime_reconnects_total") == 1
    assert value(m, "sipagent_realtime_errors_total", code="rate_limit_exceeded") == 1
    assert value(m, "sipagent_realtime_errors_total", code="x" * 64) == 1   # bounded label
    assert value(m, "sipagent_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert value(m, "sipagent_tool_calls_total", tool="lookup_order", outcome="timeout") == 1
    assert value(m, "sipagent_tokens_total", kind="input") == 120
    assert value(m, "sipagent_tokens_total", kind="output") == 30
    assert value(m, "sipagent_event_loop_lag_seconds") == 0.25


def test_registries_are_independent_and_prefixed() -> None:
    a, b = Metrics(), Metrics()
    a.call_counted("answered")
    assert value(a, "sipagent_calls_total", outcome="answered") == 1
    assert value(b, "sipagent_calls_total", outcome="answered") == 0
    names = {name for name, _ in samples(a)}
    assert names and all(name.startswith("sipagent_") for name in names)
    assert CONTENT_TYPE.startswith("text/plain")


def test_barge_in_pauses_by_outcome() -> None:
    m = Metrics()
    assert value(m, "sipagent_barge_in_pauses_total", outcome="resumed") == 0  # series exist before any pause
    m.barge_in_pause_ended("resumed", 0.36)
    m.barge_in_pause_ended("barge-in", 0.16)
    assert value(m, "sipagent_barge_in_pauses_total", outcome="resumed") == 1
    assert value(m, "sipagent_barge_in_pauses_total", outcome="barge-in") == 1
    # Only false pauses are a gap the caller heard for nothing.
    assert value(m, "sipagent_barge_in_false_pause_seconds_count") == 1
    assert value(m, "sipagent_barge_in_false_pause_seconds_bucket", le="0.3") == 0
    assert value(m, "sipagent_barge_in_false_pause_seconds_bucket", le="0.5") == 1


def test_limit_outcomes_and_recording_errors() -> None:
    m = Metrics()
    assert value(m, "sipagent_calls_total", outcome="time-limit") == 0  # pre-created
    assert value(m, "sipagent_recording_errors_total", kind="transcript") == 0
    m.call_started()
    m.call_ended("media-timeout", 31.0)
    m.recording_error("audio")
    assert value(m, "sipagent_calls_total", outcome="media-timeout") == 1
    assert value(m, "sipagent_calls_total", outcome="error") == 0
    assert value(m, "sipagent_recording_errors_total", kind="audio") == 1
