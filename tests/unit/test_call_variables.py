"""An outbound call's variables: checked like any client input, then seen by templates as {var.NAME}."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sipagent.bridge.context import (
    MAX_CALL_VARIABLE_VALUE,
    MAX_CALL_VARIABLES,
    CallContext,
    check_call_variables,
    render,
)


def test_variables_fill_var_templates_and_defaults_fill_the_gaps() -> None:
    context = CallContext("c1", datetime(2026, 12, 5, 9, 0, tzinfo=UTC), dialed="sip:2002@pbx",
                          call_variables={"first_name": "Ada", "order": "7721"})
    values = context.variables({"var.order": "unknown", "var.agent": "Sam"})
    assert render("Hi {var.first_name}, order {var.order}, from {var.agent}{var.absent}.", values) == \
        "Hi Ada, order 7721, from Sam."
    assert context.to_json()["variables"] == {"first_name": "Ada", "order": "7721"}
    assert "variables" not in CallContext("c2", context.started).to_json()


def test_a_value_is_substituted_once_and_cannot_close_a_quote() -> None:
    context = CallContext("c1", datetime(2026, 12, 5, tzinfo=UTC), call_variables={"name": 'x" {now}'})
    assert render('Say "{var.name}"', context.variables()) == "Say \"x' {now}\""


@pytest.mark.parametrize(("variables", "problem"), [
    (["a"], "expected an object"),
    ({"9lives": "x"}, "a name is letters"),
    ({"a-b": "x"}, "a name is letters"),
    ({"a": 5}, "variables.a: expected a string"),
    ({"a": {"b": "c"}}, "variables.a: expected a string"),
    ({"a": "line\r\nX-Injected: 1"}, "one line of printable text"),
    ({"a": "x" * (MAX_CALL_VARIABLE_VALUE + 1)}, f"at most {MAX_CALL_VARIABLE_VALUE} characters"),
    ({f"v{i}": "x" for i in range(MAX_CALL_VARIABLES + 1)}, f"at most {MAX_CALL_VARIABLES}"),
])
def test_bad_variables_are_refused_with_the_reason(variables: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_call_variables(variables)


def test_good_variables_pass_unchanged() -> None:
    good = {"first_name": "Zoë", "_x": "", "n" * 64: "x" * MAX_CALL_VARIABLE_VALUE}
    assert check_call_variables(good) == good
