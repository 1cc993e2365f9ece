"""sipagent: an AI voice agent that registers on a PBX as a SIP softphone."""

__version__ = "0.1.0"
