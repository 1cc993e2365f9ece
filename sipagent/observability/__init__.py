"""Operability: Prometheus metrics, the /metrics + /healthz endpoint, and process logging."""

from sipagent.observability.health import HealthServer, HealthState, LoopStallDetector, start_health_server
from sipagent.observability.logs import (
    call_context,
    call_id_var,
    call_logger,
    configure_logging,
    install_trace_toggle,
    set_call_id,
    set_trace,
    trace_enabled,
    trace_logger,
)
from sipagent.observability.metrics import CALL_OUTCOMES, CallOutcome, Metrics

__all__ = [
    "CALL_OUTCOMES",
    "CallOutcome",
    "HealthServer",
    "HealthState",
    "LoopStallDetector",
    "Metrics",
    "call_context",
    "call_id_var",
    "call_logger",
    "configure_logging",
    "install_trace_toggle",
    "set_call_id",
    "set_trace",
    "start_health_server",
    "trace_enabled",
    "trace_logger",
]
