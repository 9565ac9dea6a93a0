"""Small helpers over the cffi binding ``devfs._fuse`` (see build_fuse.py).

Nothing here keeps state: :mod:`devfs.session` owns the session and the
callbacks, :mod:`devfs.server` the meaning of each request.
"""
import os
import time

try:
    from ._fuse import ffi, lib
except ImportError as e:  # pragma: no cover - a build problem, not a runtime one
    raise ImportError(
        "devfs._fuse is not built: run `python3 devfs/build_fuse.py` in the "
        "repository (needs libfuse3-dev and pkg-config)"
    ) from e

NULL = ffi.NULL

# The static tree never changes while mounted, so the kernel may cache names
# and attributes for as long as it likes (seconds); nodes under fds/ come and
# go, so nothing of them is cached.
ENTRY_TIMEOUT = 3600.0
ATTR_TIMEOUT = 3600.0


def timeouts(node):
    """``(entry_timeout, attr_timeout)`` in seconds for ``node``."""
    return (0.0, 0.0) if node.dynamic else (ENTRY_TIMEOUT, ATTR_TIMEOUT)

# Mount options (DESIGN.md, Transport): anyone may open (allow_other), the
# kernel enforces the modes (default_permissions), and the mount goes away
# with the server even on SIGKILL (auto_unmount: libfuse's fusermount3 helper).
DEFAULT_OPTIONS = ("allow_other", "default_permissions", "auto_unmount",
                   "fsname=iommufs", "subtype=iommufs")

_START = time.time()


def req_ident(req):
    """``(tid, uid, gid)`` of the thread that made request ``req``.

    fuse_req_ctx()->pid is the caller's thread id (fuse-notes §4), valid for
    every request the kernel sends on behalf of a process (not RELEASE/FORGET).
    """
    c = lib.fuse_req_ctx(req)
    return c.pid, c.uid, c.gid


def fill_stat(st, node):
    """Fill ``struct stat *st`` for ``node`` (devfs.nodes.Node).

    Owner root, or the uid a returned fd's node belongs to: with
    default_permissions the kernel checks the mode bits, and the modes
    (0666 / 0444 / 0755; 0600 under fds/) decide who gets in.
    """
    st.st_ino = node.ino
    st.st_mode = node.mode
    st.st_nlink = (2 + sum(1 for c in node.children.values() if c.is_dir)) if node.is_dir else 1
    st.st_uid = node.uid
    st.st_gid = 0
    st.st_size = 0
    st.st_blksize = 4096
    st.st_blocks = 0
    sec = int(_START)
    for ts in (st.st_atim, st.st_mtim, st.st_ctim):
        ts.tv_sec = sec
        ts.tv_nsec = 0


def make_args(argv):
    """A ``struct fuse_args *`` for ``argv`` (list of str).

    Returns ``(args, keepalive)``: keep ``keepalive`` referenced for as long
    as libfuse may look at the strings (fuse_session_new copies what it keeps).
    """
    cstrs = [ffi.new("char[]", os.fsencode(a)) for a in argv]
    cargv = ffi.new("char *[]", cstrs + [NULL])
    args = ffi.new("struct fuse_args *")
    args.argc = len(argv)
    args.argv = cargv
    args.allocated = 0
    return args, (cstrs, cargv)
