"""cffi (API mode, out of line) build of ``cext._native``.

One extension holds the C that core needs: client-memory access
(procmem.c), the I/O page tables and walker (pagetable.c) and the free IOVA
space of an IOAS (holes.c). Each part keeps
its declarations in a ``.cdef`` file beside its sources, so parts are added
without touching each other.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = [p for p in ("procmem", "pagetable", "holes", "nested") if os.path.exists(os.path.join(HERE, p + ".c"))]

ffibuilder = FFI()
for part in PARTS:
    with open(os.path.join(HERE, part + ".cdef")) as f:
        ffibuilder.cdef(f.read())

ffibuilder.set_source(
    "cext._native",
    "\n".join(f'#include "{p}.h"' for p in PARTS),
    sources=[os.path.join("cext", p + ".c") for p in PARTS],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.dirname(HERE), verbose=False)
