"""Build ``libiommufs-preload.so`` from ``cext/preload.c``.

A plain shared library made by the C compiler (``$CC``, default ``cc``),
not a Python extension: it is LD_PRELOAD'ed into programs of any language
(devfs.run). setup.py's build hook calls :func:`build` for installs;
scripts/setup.sh runs this file to build it in place, beside the source;
``--sanitize OUTDIR`` builds the ASan+UBSan variant into ``OUTDIR/cext/``
(cext/sanitize.py).
"""
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "preload.c")
NAME = "libiommufs-preload.so"


def build(out_dir=HERE, flags=("-O2",)):
    """Compile and link the shim into ``out_dir`` with extra ``flags``
    (compiler and linker); returns its path. CalledProcessError if the
    compiler fails."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    out = os.path.join(out_dir, NAME)
    tmp = out + ".tmp"
    # No _FORTIFY_SOURCE: it would turn the open() defined here into __open_2 calls.
    subprocess.run([*cc, "-shared", "-fPIC", *flags, "-std=gnu11", "-Wall", "-U_FORTIFY_SOURCE",
                    "-pthread", "-o", tmp, SOURCE, "-ldl"], check=True)
    os.replace(tmp, out)      # a running program may have the old one mapped
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sanitize"]:
        sys.path.insert(0, HERE)
        import sanitize

        out_dir = os.path.join(os.path.abspath(sys.argv[2]), "cext")
        os.makedirs(out_dir, exist_ok=True)
        print(build(out_dir, sanitize.CFLAGS))
    else:
        print(build(sys.argv[1] if len(sys.argv) > 1 else HERE))
