"""cffi build script (API mode) for the native audio kernel: module ``sipagent._kernel``.

Used by setup.py (``cffi_modules``); run directly to build in place for development.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["g711.c", "g722.c", "g722_lanes.c", "g722_lanes_bw.c", "resample.c", "fused.c", "frame.c", "base64.c"]

FLAGS = ["-O3", "-fno-wrapv", "-std=c99", "-ffp-contract=off"]
# CPython's own flags carry -fwrapv, which blocks loop vectorisation on GCC; -O3 enables it.
# -ffp-contract=off: no fused multiply-adds, so every SIMD path rounds exactly like the scalar code.
CC = os.environ.get("CC") or sysconfig.get_config_var("CC") or ""
if "gcc" in CC and "clang" not in CC:
    # GCC 12's unroll-and-jam turns the resampler's register-blocked FIR pass into scalar code (4x slower).
    # and turns the G.722 delay-line shifts into memmove calls (~10 % of a G.722 frame).
    FLAGS += ["-fno-loop-unroll-and-jam", "-fno-tree-loop-distribute-patterns"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "include" / "sipagent_kernel.h").read_text(encoding="utf-8"))
ffibuilder.set_source(
    "sipagent._kernel",
    '#include <stddef.h>\n#include <stdint.h>\n#include "sipagent_kernel.h"\n',
    # Relative paths keep absolute build paths out of the generated C and the wheel.
    sources=[str((HERE / "src" / name).relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd())
             else str(HERE / "src" / name) for name in SOURCES],
    include_dirs=[str(HERE / "include")],
    extra_compile_args=FLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
