"""The layering rules of docs/architecture.md, checked by reading every module's imports.

- Pure cores never touch asyncio, sockets, the clock or websockets: they take bytes and times in.
- Lower layers never import upper ones.
- Only sipagent/media/kernel.py imports the compiled binding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sipagent"

# Layer rank: a module may import its own layer and lower ranks only.
RANKS = {
    "errors": 0, "strict_json": 0,
    "sdp": 1, "sip": 1, "rtp": 1, "media": 1,
    "realtime": 2,
    "bridge": 3,
    "config": 4,
    "agent": 5, "outbound": 5, "call_media": 5, "human_leg": 5, "demo": 5, "doctor": 5, "testing": 5, "cli": 6,
    "observability": 1,  # a leaf: metrics, health, logs; imports no other layer
}
# Importing across these pairs is forbidden even at equal rank (sip knows nothing of RTP/SDP payloads,
# rtp sees media only for the playout queue).
FORBIDDEN = {("sip", "rtp"), ("sip", "media"), ("rtp", "sip"), ("rtp", "sdp"), ("sdp", "sip"),
             ("media", "sip"), ("media", "sdp")}
IO_MODULES = {"asyncio", "socket", "time", "websockets", "selectors", "threading", "subprocess"}
# The asyncio shells: allowed to do I/O. Everything else under these packages is a pure core.
SHELLS = {
    "sip/transport.py", "sip/ua.py", "sip/front.py", "sip/outgoing.py", "rtp/endpoint.py", "rtp/ports.py",
    "media/clock.py",
}
PURE_PACKAGES = ("sip", "sdp", "rtp")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_kernel" not in p.name)


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_layers(path: Path) -> None:
    layer = layer_of(path)
    if layer == "__init__":
        return
    rank = RANKS.get(layer)
    assert rank is not None, f"{path}: layer {layer!r} has no rank in tests/test_layers.py"
    for name in imported(path):
        parts = name.split(".")
        if parts[0] != "sipagent" or len(parts) < 2:
            continue
        target = parts[1]
        if target == "_kernel":
            assert path.relative_to(PACKAGE).as_posix() == "media/kernel.py", f"{path} imports the binding"
            continue
        if target not in RANKS or target == layer:
            continue
        assert RANKS[target] <= rank, f"{path} ({layer}) imports the upper layer {name}"
        assert (layer, target) not in FORBIDDEN, f"{path} ({layer}) must not import {name}"


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if layer_of(p) in PURE_PACKAGES and p.relative_to(PACKAGE).as_posix() not in SHELLS],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_pure_cores_do_no_io(path: Path) -> None:
    bad = {name for name in imported(path) if name.split(".")[0] in IO_MODULES}
    assert not bad, f"{path} is a sans-I/O core but imports {sorted(bad)}"


def test_test_modules_have_unique_names() -> None:
    # The test folders are not packages: two test files of one name abort the whole run's collection.
    names = [path.name for path in (PACKAGE.parent / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
