"""HealthState reasons (fake clock) and the event-loop stall detector (a real, deliberately blocked loop)."""

from __future__ import annotations

import asyncio
import time

from sipagent.observability.health import HealthState, LoopStallDetector
from sipagent.observability.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registration_lost_flag_and_report() -> None:
    health = HealthState()
    assert health.healthy
    assert health.report() == {"status": "ok", "problems": [], "registration_lost": False, "loop_lag_s": 0.0}
    health.registration_lost = True
    assert not health.healthy
    assert health.report()["status"] == "unhealthy"
    assert health.report()["problems"] == ["registration lost"]
    health.registration_lost = False
    assert health.healthy


def test_registration_grace_period() -> None:
    clock = FakeClock()
    health = HealthState(registration_grace_s=30.0, clock=clock)
    health.note_registration(False)
    clock.now += 29.0
    assert not health.registration_lost
    health.note_registration(False)        # still down: the grace period keeps counting from the first
    clock.now += 2.0
    assert health.registration_lost
    health.note_registration(True)
    assert health.healthy


def test_each_account_has_its_own_grace_period() -> None:
    clock = FakeClock()
    health = HealthState(registration_grace_s=30.0, clock=clock)
    health.note_registration(True, "sales")
    health.note_registration(False, "support")
    clock.now += 20.0
    health.note_registration(False, "sales")
    clock.now += 11.0
    assert health.registration_lost and health.accounts_lost() == ["support"]
    assert health.report()["problems"] == ["registration lost (accounts support)"]
    assert health.report()["accounts_lost"] == ["support"]
    health.note_registration(True, "support")
    assert health.healthy  # sales has been down 11 s only
    clock.now += 20.0
    assert health.accounts_lost() == ["sales"]
    health.note_registration(True, "sales")
    assert health.healthy and "accounts_lost" not in health.report()


def test_stall_is_remembered_for_a_while() -> None:
    clock = FakeClock()
    health = HealthState(stall_threshold_s=2.0, stall_memory_s=30.0, clock=clock)
    health.note_lag(1.9)
    assert health.healthy
    health.note_lag(2.5)
    clock.now += 10.0
    health.note_lag(0.001)
    [problem] = health.problems()
    assert "stalled" in problem and "2.5" in problem
    clock.now += 21.0
    assert health.healthy
    assert health.report()["loop_lag_s"] == 0.001


def test_extra_problems() -> None:
    health = HealthState()
    health.set_problem("shutdown", "shutting down")
    assert health.problems() == ["shutting down"]
    health.clear_problem("shutdown")
    health.clear_problem("never-set")
    assert health.healthy


def test_detector_sees_a_blocked_loop() -> None:
    # Threshold 0.5 s, the loop blocked for 1.5 s: a margin of 1 s either way, so load cannot flake it.
    async def scenario() -> tuple[bool, bool, bool, float]:
        health = HealthState(stall_threshold_s=0.5, stall_memory_s=60.0)
        metrics = Metrics()
        detector = LoopStallDetector(health, metrics, interval_s=0.05)
        detector.start()
        try:
            await asyncio.sleep(0.2)
            healthy_before = health.healthy
            time.sleep(1.5)                                # block the event loop on purpose
            for _ in range(100):                           # bounded: at most ~5 s
                await asyncio.sleep(0.05)
                if not health.healthy:
                    break
            unhealthy_after = not health.healthy
            health.stall_memory_s = 0.0                    # forget the stall: healthy once lag is small again
            for _ in range(100):
                await asyncio.sleep(0.05)
                if health.healthy:
                    break
            return healthy_before, unhealthy_after, health.healthy, metrics.registry.get_sample_value(
                "sipagent_event_loop_lag_seconds") or 0.0
        finally:
            await detector.stop()

    healthy_before, unhealthy_after, recovered, lag = asyncio.run(scenario())
    assert healthy_before
    assert unhealthy_after
    assert recovered
    assert lag < 0.5
