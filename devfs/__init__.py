"""iommufs transport: libfuse3's low-level API bound with cffi, driven by trio.

- :mod:`devfs.build_fuse`: the cffi build of ``devfs._fuse`` (libfuse3 + the loop);
- :mod:`devfs.fuse`: small helpers over the binding;
- :mod:`devfs.nodes`: the node tree, from core's node table (``iommu``,
  ``vfio/devices/vfioN``, ``devices/<name>/{dma,info,driver}``, ``fds/``);
- :mod:`devfs.frames`: the frame codec and per-thread reply slots;
- :mod:`devfs.server`: requests -> core's files (core.files) under the core lock;
- :mod:`devfs.session`: mount, the FUSE loop thread, deferred replies on trio, INTERRUPT;
- :mod:`devfs.cli`: the ``iommufs`` command; :mod:`devfs.mount`: starting and
  stopping a server from another process; :mod:`devfs.run`: ``iommufs run``;
- :mod:`devfs.client`: a Python client of a mount.

Importing the package loads nothing heavy: clients need not have libfuse.
"""
import os as _os

# The sanitizer build (cext/sanitize.py) shadows _fuse only: a directory
# first on __path__ holds it, the Python modules are found here as always.
if _os.environ.get("IOMMUFS_SANITIZE_DIR"):
    __path__.insert(0, _os.path.join(_os.path.abspath(_os.environ["IOMMUFS_SANITIZE_DIR"]), "devfs"))
