"""iommufs C extensions built with cffi: I/O page tables and walker, client-memory access."""
import os as _os

# The sanitizer build (cext/sanitize.py) shadows the compiled modules only:
# a directory first on __path__ holds _native and the shim, the Python
# modules are found here as always.
if _os.environ.get("IOMMUFS_SANITIZE_DIR"):
    __path__.insert(0, _os.path.join(_os.path.abspath(_os.environ["IOMMUFS_SANITIZE_DIR"]), "cext"))
