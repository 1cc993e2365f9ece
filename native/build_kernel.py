"""cffi build script (API mode) for the native audio kernel: module ``sipagent._kernel``.

Used by setup.py (``cffi_modules``); run directly to build in place for development.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["g711.c", "g722.c", "resample.c", "fused.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "include" / "sipagent_kernel.h").read_text(encoding="utf-8"))
ffibuilder.set_source(
    "sipagent._kernel",
    '#include <stddef.h>\n#include <stdint.h>\n#include "sipagent_kernel.h"\n',
    # Relative paths keep absolute build paths out of the generated C and the wheel.
    sources=[str((HERE / "src" / name).relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd())
             else str(HERE / "src" / name) for name in SOURCES],
    include_dirs=[str(HERE / "include")],
    # CPython's own flags carry -fwrapv, which blocks loop vectorisation on GCC; -O3 enables it.
    extra_compile_args=["-O3", "-fno-wrapv", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
