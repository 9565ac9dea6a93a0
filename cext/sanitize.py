"""The sanitizer build: the C of iommufs with AddressSanitizer and
UndefinedBehaviorSanitizer, beside the normal build, never instead of it.

``scripts/sanitize.sh`` builds it into a directory of its own (``--sanitize
OUTDIR`` of cext/build_native.py, devfs/build_fuse.py and
cext/build_preload.py) laid out as the packages are: ``OUTDIR/cext/_native*.so``,
``OUTDIR/cext/libiommufs-preload.so``, ``OUTDIR/devfs/_fuse*.so``. A process
with ``IOMMUFS_SANITIZE_DIR=OUTDIR`` in its environment imports those
(cext/__init__.py and devfs/__init__.py put ``OUTDIR/<package>`` first on
the package's ``__path__``; devfs.run.shim_path() takes the shim from there
too), and so do the servers and clients it starts, which inherit it.

CPython is not built with ASan, so the runtime must be loaded first:
``LD_PRELOAD`` of gcc's libasan and libubsan (:func:`runtime`), with
``ASAN_OPTIONS=detect_leaks=0`` (CPython's own allocations are not leaks
worth reading). UBSan aborts at the first report
(``-fno-sanitize-recover=undefined``), as ASan does.
"""
import os
import subprocess

CFLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
          "-fno-sanitize-recover=undefined", "-g", "-O1"]
LDFLAGS = ["-fsanitize=address,undefined"]
ENV = "IOMMUFS_SANITIZE_DIR"


def runtime(cc="gcc"):
    """Paths of the compiler's ASan and UBSan runtimes, in LD_PRELOAD order."""
    out = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run([cc, f"-print-file-name={lib}"], check=True, capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(path):
            raise RuntimeError(f"{cc} has no {lib} (install its sanitizer runtimes)")
        out.append(os.path.realpath(path))
    return out


def shadow_dir(package):
    """The directory a sanitizer build of ``package`` lives in, when the
    environment selects one (IOMMUFS_SANITIZE_DIR), else None."""
    root = os.environ.get(ENV)
    if not root:
        return None
    return os.path.join(os.path.abspath(root), package)


if __name__ == "__main__":
    print(":".join(runtime()))
