"""Calls the agent places: the registry and limits (calls), targets, the control API, ``sipagent call``."""
