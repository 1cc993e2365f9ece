"""The shipped demo configuration as the tests use it.

The demo's order intent takes the order number on the keypad (collect_digits) and ignores digits heard in
speech, since the offline recogniser mishears them. Most tests that ask about an order out loud are about
something else (audio, barge-in, recordings, reconnects, hold): for them ``spoken_order_lookup`` gives the
intent the demo had before the keypad, which looks up order 7721 whatever digits were heard. The keypad
itself is tested in test_dtmf_tools.py and by the demo test.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def demo_data() -> dict[str, Any]:
    """sipagent/data/demo.yaml as plain data (its ${VAR:-default}s left for the loader)."""
    data: dict[str, Any] = yaml.safe_load(
        resources.files("sipagent").joinpath("data/demo.yaml").read_text(encoding="utf-8"))
    return data


def spoken_order_lookup(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (the demo's configuration) with an order intent that needs no keys: "where is my order ..."
    looks up order 7721 at once."""
    for intent in data["realtime"]["local"]["intents"]:
        if intent["name"] == "order_status":
            intent.pop("ask_digits", None)
            intent["phrases"] = [*intent["phrases"], "where is my order seven seven two one"]
            intent["tool"] = {"name": "lookup_order", "arguments": {"order_id": "7721"}}
    return data
