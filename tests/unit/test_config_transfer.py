"""The profile's ``transfer:`` section (warm transfer): modes per profile and target, hold audio, checks
with the file, line and key."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from sipagent.bridge.hold_audio import hold_audio, load_hold_wav, tone_pattern
from sipagent.config import Config, load_config, load_config_text
from sipagent.errors import ConfigError

BASE = """\
realtime:
  provider: local
agent:
  transfer_target: "100"
  transfer_targets: {sales: "600", billing: "700"}
  tools:
    - name: transfer_call
"""


def load(text: str) -> Config:
    return load_config_text(text, "agent.yaml", {})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


def test_blind_is_the_default() -> None:
    transfer = load(BASE).profiles()["default"].transfer
    assert transfer.mode == "blind" and transfer.mode_of("sales") == "blind" and transfer.hold_audio == "tone"


def test_mode_per_profile_and_per_target() -> None:
    text = BASE + """\
  transfer:
    mode: warm
    modes: {billing: blind}
    hold_message: One moment please.
    ring_timeout_s: 15
agents:
  night:
    transfer: {mode: blind}
"""
    profiles = load(text).profiles()
    day, night = profiles["default"].transfer, profiles["night"].transfer
    assert (day.mode_of("sales"), day.mode_of("billing"), day.mode_of("")) == ("warm", "blind", "warm")
    # A profile's transfer section inherits key by key from the agent's.
    assert night.mode == "blind" and night.modes == {"billing": "blind"} and night.ring_timeout_s == 15
    assert night.hold_message == "One moment please."


def test_errors_name_the_file_line_and_key() -> None:
    assert error_of(BASE + "  transfer: {mode: cold}\n").startswith("agent.yaml:8: agent.transfer.mode")
    message = error_of(BASE + "  transfer: {modes: {support: warm}}\n")
    assert "agent.transfer.modes.support" in message and "billing, default, sales" in message
    assert "agent.transfer.ring_timeout_s" in error_of(BASE + "  transfer: {ring_timeout_s: 0}\n")
    assert "agent.transfer.hold_audio" in error_of(BASE + "  transfer: {hold_audio: /nonexistent/hold.wav}\n")
    assert "agent.transfer.unknown" in error_of(BASE + "  transfer: {unknown: 1}\n")


def test_hold_audio_wav_relative_to_the_config_file(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "hold.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(struct.pack("<800h", *([1000] * 800)))
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(BASE + "  transfer: {mode: warm, hold_audio: hold.wav}\n")
    assert load_config(config_file).profiles()["default"].transfer.hold_audio == str(tmp_path / "hold.wav")
    (tmp_path / "stereo.wav").write_bytes(b"RIFF junk")
    config_file.write_text(BASE + "  transfer: {hold_audio: stereo.wav}\n")
    with pytest.raises(ConfigError, match="not a WAV file"):
        load_config(config_file)


def test_check_shows_which_targets_are_warm() -> None:
    config = load(BASE + "  transfer: {mode: warm, modes: {billing: blind}}\n")
    line = next(line for line in config.routing_table() if line.startswith("  default:"))
    assert "transfer targets sales (warm), billing," in line
    assert "sip:100@0.0.0.0 (default, warm)" in config.summary()


def write_wav(path: Path, channels: int, rate: int, seconds: float) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(int(2 * channels * rate * seconds)))


def test_hold_audio_files_and_patterns(tmp_path: Path) -> None:
    write_wav(tmp_path / "narrow.wav", 1, 8000, 1.0)
    assert abs(len(load_hold_wav(tmp_path / "narrow.wav")) - 48000) < 100  # 1 s at 24 kHz
    write_wav(tmp_path / "stereo.wav", 2, 8000, 1.0)
    with pytest.raises(ValueError, match="16-bit mono"):
        load_hold_wav(tmp_path / "stereo.wav")
    write_wav(tmp_path / "cd.wav", 1, 44100, 1.0)
    with pytest.raises(ValueError, match="44100 Hz"):
        load_hold_wav(tmp_path / "cd.wav")
    write_wav(tmp_path / "click.wav", 1, 8000, 0.01)
    with pytest.raises(ValueError, match="shorter"):
        load_hold_wav(tmp_path / "click.wav")
    tone = tone_pattern()
    assert len(tone) == 2 * 24000 * 4 and any(tone[:1000]) and not any(tone[-1000:])  # a beep, then quiet
    assert hold_audio("silence") == bytes(48000) and hold_audio("/gone.wav") == tone  # gone since load: the tone
