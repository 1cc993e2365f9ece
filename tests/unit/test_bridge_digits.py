"""The keypad entry of collect_digits (a collector driven by keys and a fake clock) and the checks on the
DTMF tools' arguments, which come from the model and so, indirectly, from the caller."""

from __future__ import annotations

import math

import pytest

from sipagent.bridge.digits import (
    MAX_DIGITS,
    Collected,
    CollectSpec,
    DigitCollector,
    ToolArgumentError,
    collect_spec,
    send_digits,
)
from sipagent.bridge.settings import ToolConfig
from sipagent.bridge.tools import BUILTIN_SCHEMAS, tool_definitions

SPEC = CollectSpec(max_digits=6, terminator="#", first_digit_timeout_s=10.0, inter_digit_timeout_s=5.0,
                   max_wait_s=60.0)


def type_keys(collector: DigitCollector, keys: str, start: float, step: float = 0.3) -> Collected | None:
    return collector.keys((key, start + i * step) for i, key in enumerate(keys))


def test_terminator_ends_the_entry_and_is_not_a_digit() -> None:
    collector = DigitCollector(SPEC, now=100.0)
    collector.prompt_finished(102.0)
    assert type_keys(collector, "772", 103.0) is None
    done = collector.key("#", 104.0)
    assert done == Collected("772", "terminator")
    assert done.output() == {"digits": "772", "ended_by": "terminator", "count": 3}
    assert collector.key("5", 104.2) is None and collector.result == done  # later keys are not taken


def test_count_ends_the_entry() -> None:
    collector = DigitCollector(SPEC, now=0.0)
    assert type_keys(collector, "12345", 1.0) is None
    assert collector.key("6", 3.0) == Collected("123456", "count")


def test_star_and_letters_are_digits_unless_the_terminator() -> None:
    collector = DigitCollector(CollectSpec(max_digits=8, terminator="*"), now=0.0)
    assert type_keys(collector, "1#a", 0.0) is None
    assert collector.key("*", 1.0) == Collected("1#A", "terminator")
    assert DigitCollector(SPEC, 0.0).key("x", 0.1) is None  # not a key: ignored


def test_no_terminator_ends_by_count_or_timeout() -> None:
    collector = DigitCollector(CollectSpec(max_digits=4, terminator="", inter_digit_timeout_s=3.0), now=0.0)
    assert type_keys(collector, "9#", 1.0) is None
    assert collector.digits == "9#"
    assert collector.poll(1.3 + 2.9) is None
    assert collector.poll(1.3 + 3.0) == Collected("9#", "timeout")


def test_first_digit_timer_starts_when_the_prompt_ends() -> None:
    collector = DigitCollector(SPEC, now=0.0)
    # The agent is still asking: no first-digit timeout however long it talks (up to max_wait_s).
    assert collector.poll(30.0) is None and not collector.prompt_over
    collector.prompt_finished(31.0)
    collector.prompt_finished(35.0)  # only the first end counts
    assert collector.deadline == 41.0
    assert collector.poll(40.9) is None
    assert collector.poll(41.0) == Collected("", "timeout")


def test_inter_digit_timeout_counts_from_the_last_key() -> None:
    collector = DigitCollector(SPEC, now=0.0)
    collector.prompt_finished(1.0)
    assert collector.key("4", 10.0) is None  # within the first-digit timeout (1 + 10)
    assert collector.deadline == 15.0
    assert collector.key("2", 14.0) is None
    assert collector.poll(18.9) is None
    assert collector.poll(19.0) == Collected("42", "timeout")


def test_a_key_after_the_deadline_does_not_revive_the_entry() -> None:
    collector = DigitCollector(SPEC, now=0.0)
    collector.prompt_finished(0.0)
    assert collector.key("1", 10.5) == Collected("", "timeout")
    assert collector.result == Collected("", "timeout")


def test_max_wait_bounds_a_prompt_that_never_ends() -> None:
    collector = DigitCollector(SPEC, now=5.0)
    assert collector.key("3", 20.0) is None
    assert collector.deadline == 25.0
    collector2 = DigitCollector(SPEC, now=5.0)
    assert collector2.deadline == 65.0
    assert collector2.poll(65.0) == Collected("", "timeout")


def test_digits_typed_during_the_prompt_count() -> None:
    """Keys pressed after the tool call while the agent still speaks (and typed ahead, fed at the start)."""
    collector = DigitCollector(SPEC, now=0.0)
    assert collector.keys([("7", -0.8), ("7", -0.4)]) is None  # typed ahead, before the tool call
    assert type_keys(collector, "21", 0.5) is None  # while the prompt plays
    assert not collector.prompt_over
    collector.prompt_finished(1.0)
    assert collector.key("#", 2.0) == Collected("7721", "terminator")


# ---------------------------------------------------------------- the model's arguments


def test_collect_arguments_merge_over_the_defaults() -> None:
    assert collect_spec({}, SPEC) == SPEC
    spec = collect_spec({"max_digits": 4, "terminator": "", "timeout_s": 20, "inter_digit_timeout_s": 2.5}, SPEC)
    assert spec == CollectSpec(4, "", 20.0, 2.5, SPEC.max_wait_s)
    assert collect_spec({"max_digits": 8.0, "terminator": None}, SPEC).max_digits == 8  # JSON 8.0 is 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_digits": 0}, "max_digits must be from 1 to 64"),
        ({"max_digits": MAX_DIGITS + 1}, "max_digits must be from 1 to 64"),
        ({"max_digits": "8"}, "max_digits must be a whole number"),
        ({"max_digits": True}, "max_digits must be a whole number"),
        ({"max_digits": 2.5}, "max_digits must be a whole number"),
        ({"max_digits": 10**100}, "max_digits must be from 1 to 64"),
        ({"terminator": "1"}, "terminator must be"),
        ({"terminator": ["#"]}, "terminator must be"),
        ({"timeout_s": 0.1}, "timeout_s must be from 1 to 60 seconds"),
        ({"timeout_s": 36000}, "timeout_s must be from 1 to 60 seconds"),
        ({"timeout_s": math.nan}, "timeout_s must be a number"),
        ({"timeout_s": math.inf}, "timeout_s must be a number"),
        ({"timeout_s": "10"}, "timeout_s must be a number"),
        ({"inter_digit_timeout_s": 31}, "inter_digit_timeout_s must be from 1 to 30"),
        ({"pin": "1234"}, "unknown arguments ['pin']"),
    ],
)
def test_collect_arguments_are_checked(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ToolArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        collect_spec(arguments, SPEC)


def test_send_digits_are_checked() -> None:
    assert send_digits({"digits": "1"}) == "1"
    assert send_digits({"digits": "0044*#abcd"}) == "0044*#ABCD"
    for arguments, message in [
        ({}, "digits is required"),
        ({"digits": ""}, "digits is required"),
        ({"digits": 1234}, "digits must be a string"),
        ({"digits": ["1"]}, "digits is required"),
        ({"digits": "1" * 33}, "at most 32 keys"),
        ({"digits": "12 3"}, "not ' '"),
        ({"digits": "1;rm -rf"}, "may only contain"),
        ({"digits": "1", "then": "2"}, "unknown arguments"),
    ]:
        with pytest.raises(ToolArgumentError, match=message):
            send_digits(arguments)


def test_send_digits_keep_to_the_keys_the_profile_allows() -> None:
    # An agent that only enters account numbers: no "#1" (Asterisk's blind transfer feature code).
    assert send_digits({"digits": "4711"}, "0123456789") == "4711"
    with pytest.raises(ToolArgumentError, match=r"may only send the keys 0 1 2 3 4 5 6 7 8 9; not '#'"):
        send_digits({"digits": "#1600"}, "0123456789")


def test_dtmf_tools_have_fixed_schemas() -> None:
    """A configuration's parameters for the DTMF built-ins are ignored: the bridge checks a fixed shape."""
    tools = [ToolConfig("collect_digits", parameters={"type": "object", "properties": {"x": {}}}),
             ToolConfig("send_dtmf", description="Work the bank's menu.")]
    collect, send = tool_definitions(tools)
    assert collect["parameters"] == BUILTIN_SCHEMAS["collect_digits"][1]
    assert collect["parameters"]["properties"]["max_digits"]["maximum"] == MAX_DIGITS
    assert send["description"] == "Work the bank's menu."
    assert send["parameters"]["required"] == ["digits"]
