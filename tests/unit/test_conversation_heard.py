"""What the caller heard of an item they cut off: the conversation replayed into a new session holds that
part only, whether the item's transcript came before the cut or after it; the transcript file holds it
whole, with the item's id to pair it with its ``barge_in`` entry."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from sipagent.bridge.conversation import CUT_MARK, HEARD_ITEMS, Conversation, heard_part
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.records import CallRecords
from sipagent.bridge.session import Responses
from sipagent.bridge.settings import RecordingConfig

LOG = logging.LoggerAdapter(logging.getLogger("test"), {})
HOURS = "We are open Monday to Friday from nine to five, and on Saturday from ten to two."


@pytest.mark.parametrize(("share", "expected"), [
    (0.0, ""),
    (1.0, HOURS),
    (0.2, f"We are open Monday {CUT_MARK}"),  # to the end of the word the share falls in
    (0.55, f"We are open Monday to Friday from nine to five {CUT_MARK}"),  # no comma before the mark
    (0.99, f"{HOURS[:-1]} {CUT_MARK}"),  # the last word: all of it, but it was cut all the same
])
def test_heard_part(share: float, expected: str) -> None:
    assert heard_part(HOURS, share) == expected
    assert heard_part(expected, share) == expected or not expected  # marked once, however often applied


def test_a_transcript_before_the_cut_is_trimmed_in_place() -> None:
    conv = Conversation()
    conv.caller_said("when are you open")
    conv.agent_audio("item-1", 4000)
    conv.agent_said(HOURS, "item-1")
    conv.heard_only("item-1", 1000, 4000)
    assert conv.history_text() == f"Caller: when are you open\nYou: We are open Monday to {CUT_MARK}"


def test_a_transcript_after_the_cut_comes_trimmed_and_one_nobody_heard_not_at_all() -> None:
    conv = Conversation()
    conv.heard_only("item-1", 2200, 4000)
    conv.heard_only("item-2", 0, 3000)  # deleted on the server: the model never said it
    conv.heard_only("item-3", 3000, 3000)  # heard whole: nothing to take back
    conv.agent_said(HOURS, "item-1")
    conv.agent_said("Is there anything else?", "item-2")
    conv.agent_said("Goodbye.", "item-3")
    assert [t.text for t in conv.turns] == [f"We are open Monday to Friday from nine to five {CUT_MARK}", "Goodbye."]


def test_a_turn_nobody_heard_leaves_the_history_and_only_recent_cuts_are_kept() -> None:
    conv = Conversation()
    conv.agent_said("Let me check that for you.", "item-1")
    conv.heard_only("item-1", 0, 1500)
    assert conv.turns == []
    for i in range(HEARD_ITEMS + 3):
        conv.heard_only(f"other-{i}", 10, 1000)
    assert len(conv.heard) == HEARD_ITEMS and "other-0" not in conv.heard


class _Policy:
    def flushed(self) -> None:
        pass


def test_a_barge_in_cut_trims_the_replay_and_the_file_keeps_the_whole_line(tmp_path: Path) -> None:
    async def main() -> None:
        conv = Conversation()
        records = CallRecords("call-1", datetime.now(UTC), 0.0, RecordingConfig(dir=str(tmp_path)), conv, "",
                              LOG)
        downlink = Downlink("pcm16", cast(Any, None), cast(Any, None), cast(Any, None), conv, Responses(conv),
                            cast(Any, _Policy()), records, lambda pcm, level: None)
        conv.agent_audio("item-7", 4000)
        records.agent_transcript("item-7", HOURS)
        # A duck began at 1000 ms of the item; the cut came at 1300: the caller heard up to the duck.
        assert downlink.cut(1300, 1000) == ("item-7", 1000)
        records.close({}, "caller-hangup", {})
        assert conv.history_text() == f"You: We are open Monday to {CUT_MARK}"
        lines = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
        agent = [e for e in lines if e.get("type") == "agent"]
        assert [(e["text"], e["item_id"]) for e in agent] == [(HOURS, "item-7")]

    asyncio.run(main())
