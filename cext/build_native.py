"""cffi (API mode, out of line) build of ``cext._native``.

One extension holds the C that core needs: client-memory access
(procmem.c), the I/O page tables and walker (pagetable.c) and the free IOVA
space of an IOAS (holes.c). Each part keeps
its declarations in a ``.cdef`` file beside its sources, so parts are added
without touching each other.

``python3 cext/build_native.py`` builds it in place; ``--sanitize OUTDIR``
builds the ASan+UBSan variant into ``OUTDIR/cext/`` instead (cext/sanitize.py).
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = [p for p in ("procmem", "pagetable", "holes", "nested") if os.path.exists(os.path.join(HERE, p + ".c"))]


def make_ffibuilder(cflags=("-O2",), ldflags=(), absolute=False):
    """The cffi builder of ``cext._native`` with extra compiler and linker
    flags. ``absolute``: name the sources by absolute path (a build run
    from another directory than the repository root)."""
    ffi = FFI()
    for part in PARTS:
        with open(os.path.join(HERE, part + ".cdef")) as f:
            ffi.cdef(f.read())
    top = os.path.dirname(HERE) if absolute else ""
    ffi.set_source(
        "cext._native",
        "\n".join(f'#include "{p}.h"' for p in PARTS),
        sources=[os.path.join(top, "cext", p + ".c") for p in PARTS],
        include_dirs=[HERE],
        extra_compile_args=["-std=gnu11", "-Wall", *cflags],
        extra_link_args=list(ldflags),
    )
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    if sys.argv[1:2] == ["--sanitize"]:
        sys.path.insert(0, HERE)
        import sanitize

        make_ffibuilder(sanitize.CFLAGS, sanitize.LDFLAGS, absolute=True).compile(
            tmpdir=os.path.abspath(sys.argv[2]), verbose=False)
    else:
        ffibuilder.compile(tmpdir=os.path.dirname(HERE), verbose=False)
