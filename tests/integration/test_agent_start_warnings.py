"""The warnings of an agent's start name the file, the line and the key, as `sipagent check` and load errors do."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import yaml
from bridge_helpers import bridge_config_data

from sipagent.agent import Agent
from sipagent.config import load_config_text

pytestmark = pytest.mark.timeout(30)


def test_each_start_warning_names_the_file_line_and_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    data = bridge_config_data(tmp_path, media={"srtp": "optional"}, recording={"dir": str(blocker / "rec")})
    low = int(data["media"]["rtp_ports"].split("-")[0])
    data["media"]["rtp_ports"] = f"{low}-{low + 3}"  # two calls' ports, fewer than sip.max_calls (20)
    text = yaml.safe_dump(data)
    config = load_config_text(text, "agent.yaml")
    lines = text.splitlines()

    async def start_and_stop() -> None:
        agent = Agent(config)
        await agent.start()
        await agent.stop()

    with caplog.at_level(logging.WARNING, logger="sipagent.agent"):
        asyncio.run(start_and_stop())
    warnings = {}
    for record in caplog.records:
        match = re.match(r"agent\.yaml:(\d+): ([a-z_.]+): ", record.getMessage())
        if record.name == "sipagent.agent" and match:
            warnings[match.group(2)] = int(match.group(1))
    assert set(warnings) >= {"recording.dir", "media.rtp_ports", "media.srtp"}, caplog.text
    for key, line in warnings.items():
        assert lines[line - 1].strip().startswith(key.rsplit(".", 1)[1] + ":"), (key, line, lines[line - 1])
