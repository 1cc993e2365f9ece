"""The offline Realtime-compatible backend (VAD + pocketsphinx + intents + espeak-ng), no key, no network."""
