"""The glue between FUSE requests and the emulator (core.emulator.Emulator).

:class:`Server` gives every request its meaning: opens become per-open
:class:`Handle` objects (an iommufd context, a VFIO device file, a DMA port,
a snapshot of an ``info`` document), ioctl() and frames go to core with the
caller's identity, replies of frames wait in per-thread slots. It never calls
libfuse to reply: each op returns its result, raises
:class:`core.errors.UapiError` / :class:`devfs.frames.FrameError` (the errno
of the request), or returns :data:`DEFERRED` after handing the request to the
session's trio side (:meth:`devfs.session.Session.defer`), which replies later.
Frames that must wait never hold their write(): the write returns at once,
the work goes on in the background (:meth:`devfs.session.Session.spawn`) and
the thread's next read() is what waits (devfs.frames explains why).

Threads (see devfs.session for the whole picture):

- ops run on the FUSE loop thread, one request at a time;
- deferred work runs in trio tasks (main thread) and worker threads;
- every call into core is made with :data:`CORE_LOCK` held, so core is never
  entered by two threads at once. Nothing that holds the lock waits for the
  loop thread, and the loop thread never waits for anything but the lock:
  no deadlock.

Private ioctls (``_IO(0xF5, nr)``, on ``iommu`` and VFIO nodes, by ioctl()
or in a frame):

- IOMMUFS_NULL (0xF500): 0, no core work (the transport benchmark); EBADF
  after a synchronous close.
- IOMMUFS_SYNC_CLOSE (0xF501), and frame cmd 0: close the context / device
  file now (core's close_* is idempotent; the later FUSE release finds it
  closed); later calls on the open file get EBADF. Idempotent: a second
  synchronous close answers 0.
- IOMMUFS_WHOAMI (0xF502): the identity of the open file (a positive int),
  answered only to threads of the server process itself (EPERM for anyone
  else), EBADF after a synchronous close. It is how the server learns which
  open file an fd passed in is: the context of VFIO_DEVICE_BIND_IOMMUFD's
  ``iommufd``, the access of an IOMMU_TEST_CMD access op's ``id`` (see
  resolve_fds).
- any other 0xF5xx: ENOTTY.
- returned fds' nodes (``fds/fault-N``, ``fds/access-N``) answer
  IOMMUFS_SYNC_CLOSE (release the fd now: the fault fd's reference on its
  FAULT object, or the access and its pins, are gone when it returns; a
  node opened more than once keeps its object until every open is closed),
  IOMMUFS_NULL and, on access nodes, IOMMUFS_WHOAMI (to the server's
  threads); every other ioctl is ENOTTY, as the kernel's fault and access
  fds have none. After a synchronous close, read(), write() and poll() of
  a fault fd get EBADF (poll: POLLERR); an access fd's read() and write()
  stay EINVAL.

Other rules decided here (documented choices):

- a command with direction/size bits (``cmd > 0xFFFF``) is ENOTTY on every
  path: every iommufd and VFIO command is ``_IO``, so such a number can only
  be a foreign ioctl (and in restricted FUSE_IOCTL the kernel would have
  copied buffers we never use);
- FUSE_IOCTL_COMPAT (a 32-bit caller on a 64-bit kernel) is served like a
  native call: the uAPI structs are compat-clean (``__aligned_u64`` pointers;
  the kernel's iommufd uses compat_ptr_ioctl) and ``arg`` arrives
  zero-extended, which is all process_vm_readv needs;
- ioctl() on ``dma`` and ``info`` nodes: ENOTTY; write() on ``info``: EBADF;
- poll: ``info`` is always readable; the frame nodes report POLLIN|POLLRDNORM
  when the *polling thread* has a reply waiting (slots are per thread), else
  POLLOUT|POLLWRNORM (a write would be accepted). The newest poll handle of
  each open file is kept and notified on every slot change (fuse-notes §3),
  the hook later fault queues need.

A core call may also answer "not yet": any exception with a ``wait_fd``
attribute (an fd that becomes readable when a retry can make progress)
defers the request to trio, which waits for the fd (on a dup, so core may
close its own) and retries the same call, or calls the exception's
``resume`` if it has one (a DMA waiting for a page response goes on where it
stopped); cancelled by FUSE INTERRUPT (EINTR) or the file's release, in which
case the exception's ``abandon`` (if any) is called. Tests use
it through a fake emulator; the PRI wait of DMA is its first real user.
"""
import errno
import fcntl
import itertools
import logging
import os
import select
import stat
import struct
import threading

import trio

from core import uapi
from core.caller import Caller
from core.errors import UapiError
from core.usermem import FrameArg, MemArg

from . import frames
from .frames import FrameError, build_reply, check_dma_whole, parse_request
from .fuse import ffi, req_ident
from .nodes import ACCESS, DMA, DRIVER, FAULT, FD_KINDS, INFO, IOMMU, IOMMU_INO, VFIO, Tree

log = logging.getLogger("iommufs.devfs")

#: The one process-wide lock around every call into core.
CORE_LOCK = threading.Lock()

#: An op's return value when the reply will be sent later, from trio.
DEFERRED = type("Deferred", (), {"__repr__": lambda self: "DEFERRED"})()

NULL = uapi.IOMMUFS_NULL
SYNC_CLOSE = uapi.IOMMUFS_SYNC_CLOSE
WHOAMI = uapi.IOMMUFS_WHOAMI
FD_PATH = uapi.IOMMUFS_FD_PATH
FD_PATH_SIZE = uapi.sizeof("iommufs_fd_path")
PRIVATE_TYPE = uapi.IOMMUFS_TYPE
BIND = uapi.VFIO_DEVICE_BIND_IOMMUFD
TEST_CMD = uapi.IOMMU_TEST_CMD
# The commands that pass fds in, by node kind (core.uapi.fd_fields says where):
# BIND's ``iommufd`` on a VFIO node, the access fd in IOMMU_TEST_CMD's ``id``.
FD_CMDS = frozenset((BIND, TEST_CMD))
_FD_NODE = {(VFIO, BIND), (IOMMU, TEST_CMD)}
# What an fd field must be: the node kind core.uapi.fd_fields names.
_FD_FIELD_KIND = {"iommufd": IOMMU, "access": ACCESS}
# Nodes of returned fds, and those of them an fd field may name (their open
# files answer IOMMUFS_WHOAMI to the server's threads).
_RETURNED_FD_KINDS = frozenset(FD_KINDS.values())
_PASSED_IN_KINDS = frozenset(_FD_FIELD_KIND.values())

# The private ioctls devfs answers itself; on a driver node every other
# 0xF5xx number is a driver command for core (core.driver).
TRANSPORT_PRIVATE = frozenset((NULL, SYNC_CLOSE, WHOAMI, FD_PATH))

POLLIN = select.POLLIN | select.POLLRDNORM
POLLOUT = select.POLLOUT | select.POLLWRNORM

_MAX_ID = (1 << 31) - 1   # WHOAMI returns the id through ioctl()'s int result


class Blocked(Exception):
    """Core asked to wait for ``fd`` to become readable, then retry: with
    ``resume`` (core's continuation) call that instead of the request again;
    ``abandon`` tells core the wait was given up (cancelled)."""

    def __init__(self, fd, resume=None, abandon=None):
        super().__init__(fd)
        self.fd = fd
        self.resume = resume
        self.abandon = abandon


class Handle:
    """One open file (the FUSE ``fh`` is ``id``).

    ``node``: the devfs.nodes.Node opened; ``kind``: its kind; ``obj``: what
    core returned for it (Context, VfioFile) or the device (DMA); ``closed``:
    synchronously closed; ``slots``: reply slots (frame nodes); ``ph``: the
    newest poll handle or None; ``data``: the ``info`` document (bytes);
    ``returned``: per thread, the node paths of the fds the thread's last
    fd-returning ioctl on this file returned (IOMMUFS_FD_PATH).
    """

    __slots__ = ("id", "node", "kind", "obj", "closed", "slots", "ph", "data", "returned")

    def __init__(self, hid, node, obj=None, data=b""):
        self.id = hid
        self.node = node
        self.kind = node.kind
        self.obj = obj
        self.closed = False
        self.slots = frames.ReplySlots() if node.kind not in (INFO, FAULT, ACCESS) else None
        self.ph = None
        self.data = data
        self.returned = {}       # tid -> node paths of the fds its last such ioctl returned

    def __repr__(self):
        return f"<Handle {self.id} {self.kind} {self.node.name}{' closed' if self.closed else ''}>"


def _owner_uid(h):
    """The uid that opened ``h``'s object (contexts, device, driver and
    returned-fd files record it), or None for nodes anyone may use."""
    return getattr(h.obj, "uid", None)


def _own_thread(tid):
    """True when ``tid`` is a thread of this (the server's) process."""
    return os.path.exists(f"/proc/self/task/{tid}")


def _tgid(tid):
    """The process of thread ``tid`` (OSError if gone). The devfs copy of
    core.usermem.tgid_of, so that resolution needs no core state or lock."""
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise OSError(errno.ESRCH, f"no Tgid for {tid}")


def _fd_args(cmd, head):
    """The fds an argument passes in: ``[(fd, node kind), ...]`` from its
    leading bytes ``head`` (core.uapi.fd_fields); [] when none is readable
    (core then reports EFAULT itself)."""
    return [(int.from_bytes(head[off:off + 4], "little", signed=True), _FD_FIELD_KIND[kind])
            for off, kind in uapi.fd_fields(cmd, head)]


class Server:
    """All open files of one mount and the rules of the wire protocol.

    ``emulator``: a core.emulator.Emulator (or any object with its methods);
    ``lock``: the core lock (default :data:`CORE_LOCK`). ``port`` is set by
    the session: ``defer(req, work)``, ``spawn(work, owner)``,
    ``cancel_owned(owner)``, ``wait_readable(fd)``, ``notify_poll(ph)``,
    ``destroy_pollhandle(ph)``.
    """

    def __init__(self, emulator, lock=None):
        self.emulator = emulator
        self.lock = lock or CORE_LOCK
        with self.lock:
            self.tree = Tree.build(emulator)
        self.handles = {}
        self._ids = itertools.count(1)
        self.max_write = 1 << 20   # replaced by the negotiated value at FUSE init
        self.st_dev = None         # st_dev of the mount, set by the session
        self.port = None
        self._poll_lock = threading.Lock()
        self._watching = set()
        self._watch_gen = 0

    # -- core calls ----------------------------------------------------------------
    def _core(self, fn, *args):
        """``fn(*args)`` with the core lock held.

        UapiError passes through; an exception with ``wait_fd`` becomes
        Blocked; anything else is a bug in core: logged, EIO.
        """
        with self.lock:
            try:
                return fn(*args)
            except UapiError:
                raise
            except Exception as e:
                fd = getattr(e, "wait_fd", None)
                if fd is None:
                    log.exception("core %s failed", getattr(fn, "__name__", fn))
                    raise UapiError(errno.EIO, "internal error in core") from None
                wait = e
            finally:
                if getattr(self.emulator, "watch_gen", 0) != self._watch_gen:
                    self._sync_watches()
        raise Blocked(fd, getattr(wait, "resume", None), getattr(wait, "abandon", None))

    # -- fds core watches (core.emulator.Emulator.watch) -------------------------------
    def _sync_watches(self):
        """Start a trio wait for every new watch of core, cancel the ones
        core dropped (core lock held). Each wait uses a dup of the fd, so
        core may close its own fd whenever it likes."""
        self._watch_gen = self.emulator.watch_gen
        current = set(self.emulator.watches.values())
        for w in current - self._watching:
            self._watching.add(w)
            work, dup = self._watch_job(w)
            # Unwatched before its task started, the job never runs: its
            # dup is closed by discard instead.
            self.port.spawn(work, owner=w, discard=lambda dup=dup: os.close(dup))
        for w in self._watching - current:
            self._watching.discard(w)
            self.port.cancel_owned(w)

    def _watch_job(self, w):
        dup = os.dup(w.fd)

        async def work():
            try:
                await trio.lowlevel.wait_readable(dup)
            finally:
                os.close(dup)
            await trio.to_thread.run_sync(self._core, self.emulator.fire_watch, w)

        return work, dup

    def _core_ioctl(self, h, caller, cmd, arg):
        if h.kind is IOMMU:
            r = self._core(self.emulator.iommufd_ioctl, h.obj, caller, cmd, arg)
        elif h.kind is VFIO:
            r = self._core(self.emulator.vfio_ioctl, h.obj, caller, cmd, arg)
        else:
            r = self._core(self.emulator.driver_ioctl, h.obj, caller, cmd, arg)
        if caller.returned:
            self._publish(h, caller)
        return int(r or 0)

    # -- fds returned by ioctls (README, "Ioctls that return file descriptors") --------
    def _publish(self, h, caller):
        """Give every object core returned as an fd a node under ``fds/``
        and remember the paths for the calling thread (IOMMUFS_FD_PATH)."""
        paths = []
        with self.lock:
            for obj in caller.returned:
                # The object names its kind (``node_kind``), which is also the prefix.
                kind = FD_KINDS[obj.node_kind]
                node = self.tree.add_dynamic(kind, kind, obj, caller.uid)
                obj.on_close = lambda node=node: self.tree.remove(node)
                if kind is FAULT:
                    obj.queue.on_change = lambda node=node: self._notify_node(node)
                paths.append(self.tree.path(node.ino))
        h.returned[caller.tid] = paths

    def _notify_node(self, node):
        for h in list(self.handles.values()):
            if h.node is node:
                self._notify(h)

    def _fd_path(self, h, tid, arg):
        """IOMMUFS_FD_PATH (README): EFAULT, EINVAL size, ENOENT no such fd."""
        size = int.from_bytes(arg.read(0, 4), "little")
        if size < FD_PATH_SIZE:
            raise UapiError(errno.EINVAL, f"size {size} < {FD_PATH_SIZE}")
        index = int.from_bytes(arg.read(4, 4), "little")
        paths = h.returned.get(tid, ())
        if index >= len(paths):
            raise UapiError(errno.ENOENT, f"no returned fd {index}")
        arg.write(8, paths[index].encode().ljust(FD_PATH_SIZE - 8, b"\0"))
        return 0

    # -- open / release ------------------------------------------------------------
    def _new_id(self):
        while True:
            hid = next(self._ids)
            if hid > _MAX_ID:
                self._ids = itertools.count(1)
                continue
            if hid not in self.handles:
                return hid

    def open(self, req, ino, flags):
        """open() of node ``ino`` with open ``flags`` -> the new fh (int).

        ENOENT unknown inode; EISDIR a directory; EACCES ``info`` opened for
        writing (root would pass the kernel's mode check); core's errno for
        open_iommufd / open_vfio.
        """
        node = self.tree.get(ino)
        if node is None:
            raise UapiError(errno.ENOENT, f"inode {ino}")
        if node.is_dir:
            raise UapiError(errno.EISDIR, node.name)
        obj, data = None, b""
        kind = node.kind
        if kind is INFO:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise UapiError(errno.EACCES, "info is read-only")
            data = self._core(self.emulator.device_info, node.device)
            data = data.encode() if isinstance(data, str) else bytes(data)
        elif kind is IOMMU:
            obj = self._core(self.emulator.open_iommufd, Caller(*req_ident(req)))
        elif kind is VFIO:
            obj = self._core(self.emulator.open_vfio, node.device, Caller(*req_ident(req)))
        elif kind is DRIVER:
            obj = self._core(self.emulator.open_driver, node.device, Caller(*req_ident(req)))
        elif kind is FAULT:
            obj = node.obj
            self._core(self.emulator.open_fault, obj, Caller(*req_ident(req)))
        elif kind is ACCESS:
            obj = node.obj
            self._core(self.emulator.open_access, obj, Caller(*req_ident(req)))
        else:  # DMA
            obj = node.device
        hid = self._new_id()
        h = self.handles[hid] = Handle(hid, node, obj, data)
        if kind is DRIVER:
            # Core calls this (core lock held) when events arrive: wake pollers.
            obj.on_change = lambda: self._notify(h)
        return hid

    def release(self, fh):
        """Last close of open file ``fh``: close its context / device file
        (unless closed synchronously already) and drop its poll handle."""
        h = self.handles.pop(fh, None)
        if h is None:
            return
        self.port.cancel_owned(h)
        self._drop_poll(h)
        if not h.closed:
            h.closed = True
            self._close_obj(h)

    def _close_obj(self, h):
        if h.kind is IOMMU:
            self._core(self.emulator.close_iommufd, h.obj)
        elif h.kind is VFIO:
            self._core(self.emulator.close_vfio, h.obj)
        elif h.kind is DRIVER:
            self._core(self.emulator.close_driver, h.obj)
        elif h.kind is FAULT:
            self._core(self.emulator.release_fault, h.obj)
        elif h.kind is ACCESS:
            self._core(self.emulator.release_access, h.obj)

    def _sync_close(self, h):
        if not h.closed:
            h.closed = True
            self._close_obj(h)
        return 0

    def shutdown(self):
        """Unmount: close every open file's object, then emulator.shutdown()."""
        for h in list(self.handles.values()):
            self._drop_poll(h)
            if not h.closed:
                h.closed = True
                try:
                    self._close_obj(h)
                except UapiError:
                    pass
        self.handles.clear()
        try:
            self._core(self.emulator.shutdown)
        except UapiError:
            pass

    def _handle(self, fh):
        h = self.handles.get(fh)
        if h is None:
            raise UapiError(errno.EBADF, f"no open file {fh}")
        return h

    # -- ioctl() ----------------------------------------------------------------------
    def ioctl(self, req, fh, cmd, argp, flags):
        """A real ioctl(fd, cmd, arg): the result (int >= 0), UapiError, or
        DEFERRED. ``argp``: the caller's pointer (int); ``flags``: FUSE_IOCTL_*."""
        h = self.handles.get(fh)
        if h is None:
            raise UapiError(errno.EBADF, f"no open file {fh}")
        kind = h.kind
        if kind is not IOMMU and kind is not VFIO and kind is not DRIVER:
            if kind in _RETURNED_FD_KINDS:
                return self._returned_fd_ioctl(h, req, cmd)
            raise UapiError(errno.ENOTTY, f"no ioctls on {kind}")
        if cmd == NULL:
            # The benchmark's baseline: nothing but this branch on the way.
            if h.closed:
                raise UapiError(errno.EBADF, "closed")
            return 0
        if cmd > 0xFFFF:
            raise UapiError(errno.ENOTTY, f"{cmd:#x} is not an _IO command")
        tid, uid, gid = req_ident(req)
        if cmd >> 8 == PRIVATE_TYPE and (kind is not DRIVER or cmd in TRANSPORT_PRIVATE):
            return self._private(h, tid, uid, cmd, MemArg(Caller(tid, uid, gid).mem, argp))
        if h.closed:
            raise UapiError(errno.EBADF, "closed synchronously")
        caller = Caller(tid, uid, gid)
        addr = argp
        arg = MemArg(caller.mem, addr)
        if cmd in FD_CMDS and (kind, cmd) in _FD_NODE:
            # An unreadable argument resolves nothing: core reports EFAULT.
            try:
                head = self._core(caller.mem.read, addr, 12)
            except UapiError:
                head = b""
            fds = _fd_args(cmd, head)
            if fds:
                return self._defer(req, self._ioctl_attempt(h, caller, cmd, arg),
                                   resolve=(caller, fds))
        try:
            return self._core_ioctl(h, caller, cmd, arg)
        except Blocked as b:
            return self._defer(req, self._ioctl_attempt(h, caller, cmd, arg), blocked=b)

    def _ioctl_attempt(self, h, caller, cmd, arg):
        def attempt():
            try:
                return ("ioctl", self._core_ioctl(h, caller, cmd, arg))
            except UapiError as e:
                return ("err", e.errno)
            except Blocked as b:
                return ("wait", b)
        return attempt

    def _returned_fd_ioctl(self, h, req, cmd):
        """ioctl() on a returned fd's node (a fault fd, an access fd). The
        kernel's fault fd (reference §10.1) and access fd (§12) have no
        ioctls: ENOTTY. The transport answers its private ones that a
        client needs there: IOMMUFS_SYNC_CLOSE (release the fd now: a fault
        fd's reference on its FAULT object, so IOMMU_DESTROY succeeds right
        after close(), or the access and its pins) and IOMMUFS_NULL (EBADF
        after a synchronous close); and IOMMUFS_WHOAMI on access nodes, for
        the server's own threads (how an fd passed back in is resolved)."""
        tid, uid, _gid = req_ident(req)
        if (cmd == SYNC_CLOSE or cmd == NULL
                or (cmd == WHOAMI and h.kind in _PASSED_IN_KINDS and _own_thread(tid))):
            return self._private(h, tid, uid, cmd, None)
        raise UapiError(errno.ENOTTY, f"no ioctl {cmd:#x} on a {h.kind} fd")

    def _private(self, h, tid, uid, cmd, arg):
        """A project-private ioctl (README, "Private ioctls") on ``h`` by
        thread ``tid`` of ``uid``. Like every uAPI ioctl on a file, it is
        EACCES for a uid other than the opener's (an fd inherited or passed
        over SCM_RIGHTS must not close or probe the owner's objects: issue 8),
        except WHOAMI from the server's own threads, which resolve fds that
        clients of any uid pass in."""
        if not (cmd == WHOAMI and _own_thread(tid)):
            owner = _owner_uid(h)
            if owner is not None and uid != owner:
                raise UapiError(errno.EACCES, f"{h.kind} file of uid {owner}")
        if cmd == SYNC_CLOSE:
            return self._sync_close(h)
        if cmd == FD_PATH:
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            return self._fd_path(h, tid, arg)
        if cmd == WHOAMI:
            if not _own_thread(tid):
                raise UapiError(errno.EPERM, "WHOAMI is for the server's own threads")
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            return h.id
        if cmd == NULL:
            if h.closed:
                raise UapiError(errno.EBADF, "closed")
            return 0
        raise UapiError(errno.ENOTTY, f"no private ioctl {cmd:#x}")

    # -- frames: write() and read() ------------------------------------------------------
    def write(self, req, fh, data):
        """write() of one frame (``data``: bytes) -> bytes accepted (all of
        them) or FrameError/UapiError (the write's errno).

        The reply goes to the calling thread's slot. A request that must wait
        continues in the background and the write returns at once (see
        devfs.frames: a waiting write would hold the node's inode lock).
        """
        h = self._handle(fh)
        kind = h.kind
        if kind is INFO:
            raise UapiError(errno.EBADF, "info is read-only")
        if kind is FAULT:
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            tid, uid, gid = req_ident(req)
            return self._core(self.emulator.fault_write, h.obj, Caller(tid, uid, gid), bytes(data))
        if kind is ACCESS:
            raise UapiError(errno.EINVAL, "an access fd has no write")
        n = len(data)
        if kind is DMA:
            check_dma_whole(data, self.max_write)
            cmd = argb = None
        else:
            cmd, argb = parse_request(data, self.max_write)
        tid, uid, gid = req_ident(req)
        h.slots.begin(tid)
        try:
            if kind is DMA:
                caller = Caller(tid, uid, gid)
                attempt = self._dma_attempt(h, caller, bytes(data))
                self._serve_frame(h, tid, attempt, self._dma_failure)
            else:
                self._frame(h, tid, uid, gid, cmd, argb)
        except BaseException:
            h.slots.abort(tid)
            raise
        return n

    def _frame(self, h, tid, uid, gid, cmd, argb):
        if cmd == frames.CMD_CLOSE:
            cmd = SYNC_CLOSE
        if cmd > 0xFFFF:
            result = -errno.ENOTTY
        elif cmd >> 8 == PRIVATE_TYPE and (h.kind is not DRIVER or cmd in TRANSPORT_PRIVATE):
            farg = FrameArg(argb)
            try:
                result = self._private(h, tid, uid, cmd, farg)
            except UapiError as e:
                result = -e.errno
            argb = bytes(farg.buf)
        elif h.closed:
            result = -errno.EBADF
        else:
            caller = Caller(tid, uid, gid)
            attempt = self._frame_attempt(h, caller, cmd, argb)
            failure = lambda err: build_reply(-err, argb)   # noqa: E731
            fds = _fd_args(cmd, argb[:12]) if cmd in FD_CMDS and (h.kind, cmd) in _FD_NODE else ()
            if fds:
                self._background(h, tid, attempt, failure, resolve=(caller, fds))
            else:
                self._serve_frame(h, tid, attempt, failure)
            return
        self._fill(h, tid, build_reply(result, argb))

    def _serve_frame(self, h, tid, attempt, failure):
        """Run ``attempt`` now; if core says wait, go on in the background."""
        out = attempt()
        if out[0] == "wait":
            self._background(h, tid, attempt, failure, blocked=out[1])
        else:
            self._fill(h, tid, out[1])

    def _frame_attempt(self, h, caller, cmd, argb):
        def attempt():
            arg = FrameArg(argb)   # fresh per attempt: a retry starts from the bytes sent
            try:
                result = self._core_ioctl(h, caller, cmd, arg)
            except UapiError as e:
                result = -e.errno
            except Blocked as b:
                return ("wait", b)
            extra = self.reply_extra(h, caller, cmd, arg) if result >= 0 else b""
            return ("reply", build_reply(result, arg.buf, extra))
        return attempt

    def _dma_attempt(self, h, caller, data):
        # A DMA waiting for a page response goes on with core's continuation.
        step = [lambda: self._core(self.emulator.dma, h.obj, caller, data)]

        def attempt():
            try:
                reply = step[0]()
            except Blocked as b:
                # Bind the continuation now: Python unbinds ``b`` after the handler.
                resume = b.resume
                if resume is not None:
                    step[0] = lambda: self._core(resume)
                return ("wait", b)
            except UapiError as e:    # dma() reports in its reply; this is a bug
                return ("reply", self._dma_failure(e.errno))
            return ("reply", bytes(reply))
        return attempt

    @staticmethod
    def _dma_failure(err):
        # An IODM reply (DESIGN.md): magic, status -errno, moved 0, reserved, iova 0.
        return struct.pack("<4siIIQ", frames.DMA_MAGIC, -err, 0, 0, 0)

    def reply_extra(self, h, caller, cmd, arg):
        """Extra data of a frame reply (DESIGN.md): the node path of each fd
        the ioctl returned, NUL-terminated, in the order of its fd fields."""
        if not caller.returned:
            return b""
        return b"".join(p.encode() + b"\0" for p in h.returned.get(caller.tid, ()))

    def _fill(self, h, tid, reply):
        pending = h.slots.fill(tid, reply)
        if pending is not None:
            pending.event.set()      # only background work fills a Pending: trio thread
        self._notify(h)

    def read(self, req, fh, size, off):
        """read() of ``size`` bytes at ``off`` -> bytes, FrameError/UapiError,
        or DEFERRED.

        ``info``: the document snapshot taken at open, by offset. Frame
        nodes: the calling thread's reply (ENOMSG none, ERANGE too small, the
        reply stays); if its request is still being served, the read waits
        for it (an INTERRUPT ends the wait with EINTR, the reply stays).
        """
        h = self._handle(fh)
        if h.kind is INFO:
            return h.data[off:off + size]
        tid, uid, gid = req_ident(req)
        if h.kind is FAULT:
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            data = self._core(self.emulator.fault_read, h.obj, Caller(tid, uid, gid), size)
            self._notify(h)
            return data
        if h.kind is ACCESS:
            raise UapiError(errno.EINVAL, "an access fd has no read")
        if h.kind is DRIVER and not h.slots.holds(tid):
            # No frame of this thread in flight: the read is for events.
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            data = self._core(self.emulator.driver_read, h.obj, Caller(tid, uid, gid), size)
            self._notify(h)
            return data
        reply = h.slots.take(tid, size)
        if isinstance(reply, frames.Pending):
            pending = reply

            async def work(d):
                await pending.event.wait()
                if not d.enter_commit():
                    return
                try:
                    got = h.slots.take(tid, size)
                except FrameError as e:
                    d.finish("err", e.errno)
                    return
                d.finish("buf", got)
                self._notify(h)

            return self.port.defer(req, work)
        self._notify(h)
        return reply

    # -- poll ----------------------------------------------------------------------------
    def poll(self, req, fh, ph):
        """poll() of open file ``fh`` -> revents; keeps ``ph`` (if not NULL)
        as the file's newest poll handle (the previous one is destroyed)."""
        h = self._handle(fh)
        if ph != ffi.NULL:
            with self._poll_lock:
                old, h.ph = h.ph, ph
                if old is not None:
                    self.port.destroy_pollhandle(old)
        if h.kind is INFO:
            return POLLIN
        if h.kind is FAULT:
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")     # POLLERR
            # §10.1: always writable; readable while groups wait.
            return POLLOUT | (POLLIN if self._core(self.emulator.fault_readable, h.obj) else 0)
        if h.kind is ACCESS:
            return POLLIN | POLLOUT     # a file without poll: the VFS's default mask
        if h.slots.ready(req_ident(req)[0]):
            return POLLIN
        if h.kind is DRIVER and not h.closed and h.obj.events:
            return POLLIN | POLLOUT
        return POLLOUT

    def _notify(self, h):
        if h.ph is None:
            return
        with self._poll_lock:
            if h.ph is not None:
                self.port.notify_poll(h.ph)

    def _drop_poll(self, h):
        with self._poll_lock:
            ph, h.ph = h.ph, None
            if ph is not None:
                self.port.destroy_pollhandle(ph)

    # -- deferred work -----------------------------------------------------------------------
    async def _retry(self, attempt, blocked, resolve, d=None):
        """Resolve an fd first (``resolve``: (caller, fd or None)), wait for
        ``blocked`` (a Blocked, or None), then run ``attempt`` (it takes the
        core lock) until it answers; returns its answer. With
        ``d`` (a deferred request) the core call is a commit: None if the
        request was answered meanwhile (INTERRUPT)."""
        if resolve is not None:
            caller, fds = resolve
            # Off the loop thread: the self-ioctl of resolve_fds is a
            # request to this very mount (fuse-notes §4, §7). Cancellable:
            # a cancelled wait abandons the thread, which only closes its dups.
            try:
                caller.fds = await trio.to_thread.run_sync(
                    self.resolve_fds, caller.tid, fds, abandon_on_cancel=True)
            except BaseException:
                self._abandon(blocked)      # cancelled before the wait began
                raise
        while True:
            if blocked is not None:
                await self._wait_blocked(blocked)
            if d is not None and not d.enter_commit():
                self._abandon(blocked)
                return None
            # Once core runs, its result is the answer. Run here, on the trio
            # thread: core calls are short, and a hand-off to a worker thread
            # cost a fifth of a fault round trip (scripts/bench_fault.py).
            out = attempt()
            if out[0] != "wait":
                return out
            blocked = out[1]
            if d is not None and not d.leave_commit():
                self._abandon(blocked)
                return None

    async def _wait_blocked(self, b):
        """Wait until ``b.fd`` is readable, on a dup of it (core may close its
        own fd whenever it likes); if the wait is cancelled, tell core."""
        dup = os.dup(b.fd)
        try:
            await trio.lowlevel.wait_readable(dup)
        except BaseException:
            self._abandon(b)
            raise
        finally:
            os.close(dup)

    def _abandon(self, b):
        if b is not None and b.abandon is not None:
            with self.lock:
                b.abandon()

    def _defer(self, req, attempt, blocked=None, resolve=None):
        """Answer ioctl ``req`` later, from trio (see _retry); an INTERRUPT
        answers EINTR while it waits. FUSE_IOCTL holds no inode lock, so the
        ioctl itself may wait."""

        async def work(d):
            out = await self._retry(attempt, blocked, resolve, d)
            if out is not None:
                d.finish(*out)

        # Interrupted before its task started, the work never runs: what it
        # was to wait for is abandoned all the same.
        return self.port.defer(req, work, discard=lambda: self._abandon(blocked))

    def _background(self, h, tid, attempt, failure, blocked=None, resolve=None):
        """Serve a frame request after its write() returned: the reply lands
        in ``tid``'s slot (``failure(errno)`` builds it if the work fails).
        Cancelled when the file is released."""
        pending = h.slots.pend(tid)

        async def work():
            try:
                out = await self._retry(attempt, blocked, resolve)
                reply = out[1]
            except Exception:
                log.exception("background request of %r failed", h)
                reply = failure(errno.EIO)
            if h.slots.fill(tid, reply) is pending:
                pending.event.set()
            self._notify(h)

        # Released before its task started, the job never runs: what it was
        # to wait for is abandoned all the same (a fault group's eventfd).
        self.port.spawn(work, owner=h, discard=lambda: self._abandon(blocked))

    def resolve_fds(self, tid, fds):
        """``{fd: object or errno}`` for the fd numbers of thread ``tid``'s
        process that an argument passes in (``fds``: [(fd, node kind)]:
        VFIO_DEVICE_BIND_IOMMUFD's ``iommufd`` must be an ``iommu`` node and
        gives its Context; IOMMU_TEST_CMD's access fd an ``fds/access-N``
        node and gives its core.selftest.AccessFile), as core.caller.Caller
        wants them in ``fds``.

        Runs on a worker thread, never the loop thread: pidfd_getfd takes a
        duplicate of the caller's fd; it must be a file of this mount's node
        of that kind (fstat: st_dev, st_ino), and an IOMMUFS_WHOAMI ioctl on
        the duplicate (served by the loop thread) names the open file.
        Errnos: EBADF not an open fd (or process gone, or synchronously
        closed), EBADFD not such a node of this mount.
        """
        return {fd: self._resolve(tid, fd, kind) for fd, kind in fds}

    def _resolve(self, tid, fd, kind):
        from cext._native import lib as native

        try:
            pidfd = os.pidfd_open(_tgid(tid))
        except (OSError, ValueError):
            return errno.EBADF
        try:
            dup = native.iofs_pidfd_getfd(pidfd, fd, 0)
        finally:
            os.close(pidfd)
        if dup < 0:
            return errno.EBADF
        try:
            st = os.fstat(dup)
            if self.st_dev is None or st.st_dev != self.st_dev or not stat.S_ISREG(st.st_mode):
                return errno.EBADFD
            node = self.tree.get(st.st_ino)
            if (st.st_ino != IOMMU_INO if kind is IOMMU else node is None or node.kind is not kind):
                return errno.EBADFD
            try:
                hid = fcntl.ioctl(dup, WHOAMI)
            except OSError as e:
                return errno.EBADF if e.errno == errno.EBADF else errno.EBADFD
            h = self.handles.get(hid)
            if h is None or h.kind is not kind:
                return errno.EBADFD
            if h.closed:
                return errno.EBADF
            return h.obj
        except OSError:
            return errno.EBADFD
        finally:
            os.close(dup)
