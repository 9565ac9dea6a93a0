"""The glue between FUSE requests and the emulator (core.emulator.Emulator).

:class:`Server` speaks core's file protocol (core.files): an open asks core
to open the node's target and keeps the core.files.File it returns in a
per-open :class:`Handle`; ioctl(), read(), write() and poll() call that file
with the caller's identity, without knowing what it is. What is the
transport's stays here: frames and their per-thread reply slots (the file
says which frames it speaks), the private ioctls, nodes of returned fds,
poll handles, deferred replies. It never calls libfuse to reply: each op
returns its result, raises
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

Private ioctls (``_IO(0xF5, nr)``, by ioctl() or in a frame), on the files
whose ``transport_ioctls`` name them (``iommu``, VFIO and driver nodes: all
four; returned fds: see below):

- IOMMUFS_NULL (0xF500): 0, no core work (the transport benchmark); EBADF
  after a synchronous close.
- IOMMUFS_SYNC_CLOSE (0xF501), and frame cmd 0: release the core file now
  (its release is idempotent; the later FUSE release finds it closed);
  later calls of the ops the file has get EBADF. Idempotent: a second
  synchronous close answers 0.
- IOMMUFS_WHOAMI (0xF502): the identity of the open file (a positive int),
  answered only to threads of the server process itself (EPERM for anyone
  else), EBADF after a synchronous close. It is how the server learns which
  open file an fd passed in is: the context of VFIO_DEVICE_BIND_IOMMUFD's
  ``iommufd``, the access of an IOMMU_TEST_CMD access op's ``id`` (see
  resolve_fds).
- any other 0xF5xx: ENOTTY, but on a file with private commands of its
  own (``own_private``: the driver node), whose they are.
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
- a file without an op (core.files.File: the op is None) answers as the
  VFS does, before anything else: ioctl ENOTTY, read and write EINVAL;
- poll: the frame nodes report POLLIN|POLLRDNORM when the *polling
  thread* has a reply waiting (slots are per thread), else the file's own
  answer. The newest poll handle of each open file is kept and notified on
  every slot change and whenever core says the file's answer changed
  (fuse-notes §3).

A core call may also answer "not yet" (core.files.NotYet): a Wait defers
the request to trio, which waits for its fd (on a dup, so core may close
its own) and retries the same call, or calls its ``resume`` if it has one;
cancelled by FUSE INTERRUPT (EINTR) or the file's release, in which case its
``abandon`` (if any) is called. A Wait core ends itself (``subscribe``: a
DMA waiting for a page response) takes no trio hop at all: the thread whose
core call ends it (the fault fd's write, on the loop thread) runs the
continuation once it has let go of the core lock, fills the reply slot and
answers the read parked on it (Session.park; an INTERRUPT still answers the
read EINTR, and the reply stays). A NeedFds has the caller's fds resolved
off the loop thread (:meth:`Server.resolve_fds`) and retries. Tests use
the trio wait through a fake emulator; the PRI wait of DMA subscribes.
"""
import errno
import fcntl
import itertools
import logging
import os
import stat
import threading

import trio

from cext._native import lib as native
from core import uapi
from core.caller import Caller
from core.errors import UapiError
from core.files import (FD_PATH, NULL, POLLIN, REQUEST_FRAMES, SYNC_CLOSE, TRANSPORT_IOCTLS,
                        WHOAMI, CallerFile, Eventfd, NeedFds, NotYet, Wait)
from core.mm.usermem import FrameArg, MemArg, tgid_of

from . import frames
from .eventfd import take_eventfd
from .frames import FrameError, build_reply, check_dma_whole, parse_request
from .fuse import ffi, req_ident
from .nodes import Tree

log = logging.getLogger("iommufs.devfs")

#: The one process-wide lock around every call into core.
CORE_LOCK = threading.Lock()

#: An op's return value when the reply will be sent later, from trio.
DEFERRED = type("Deferred", (), {"__repr__": lambda self: "DEFERRED"})()

FD_PATH_SIZE = uapi.sizeof("iommufs_fd_path")
PRIVATE_TYPE = uapi.IOMMUFS_TYPE

_MAX_ID = (1 << 31) - 1   # WHOAMI returns the id through ioctl()'s int result


class Handle:
    """One open file (the FUSE ``fh`` is ``id``).

    ``node``: the devfs.nodes.Node opened; ``file``: the core.files.File
    core returned for it; ``closed``: synchronously closed; ``slots``: reply
    slots (files that speak frames); ``ph``: the newest poll handle or None;
    ``returned``: per thread, the node paths of the fds the thread's last
    fd-returning ioctl on this file returned (IOMMUFS_FD_PATH).
    """

    __slots__ = ("id", "node", "file", "closed", "slots", "ph", "returned")

    def __init__(self, hid, node, file):
        self.id = hid
        self.node = node
        self.file = file
        self.closed = False
        self.slots = frames.ReplySlots() if file.frames else None
        self.ph = None
        self.returned = {}       # tid -> node paths of the fds its last such ioctl returned

    def __repr__(self):
        return (f"<Handle {self.id} {type(self.file).__name__} {self.node.name}"
                f"{' closed' if self.closed else ''}>")


def _owner_uid(h):
    """The uid that opened ``h``'s file (contexts, device, driver and
    returned-fd files record it), or None for nodes anyone may use."""
    return getattr(h.file, "uid", None)


def _own_thread(tid):
    """True when ``tid`` is a thread of this (the server's) process."""
    return os.path.exists(f"/proc/self/task/{tid}")


def _caller(req):
    tid, uid, gid = req_ident(req)
    return Caller(tid, uid, gid, resolve=True)


class Server:
    """All open files of one mount and the rules of the wire protocol.

    ``emulator``: a core.emulator.Emulator (or any object with its
    ``nodes``, ``open`` and ``shutdown``); ``lock``: the core lock (default
    :data:`CORE_LOCK`). ``port`` is set by the session: ``defer(req, work)``,
    ``park(req)``, ``spawn(work, owner)``, ``cancel_owned(owner)``,
    ``notify_poll(ph)``, ``destroy_pollhandle(ph)``.
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
        # Continuations of subscribed waits (core.files.Wait.subscribe) that
        # core made ready, run by the thread whose core call did it, once
        # it has let go of the lock; and the subscribed waits per open file.
        self._ready = []
        self._subscribed = {}

    # -- core calls ----------------------------------------------------------------
    def _core(self, fn, *args):
        """``fn(*args)`` with the core lock held.

        UapiError and core's "not yet" (core.files.NotYet) pass through;
        anything else is a bug in core: logged, EIO. Continuations the call
        made ready run afterwards, on this thread.
        """
        try:
            with self.lock:
                try:
                    return fn(*args)
                except (UapiError, NotYet):
                    raise
                except Exception:
                    log.exception("core %s failed", getattr(fn, "__name__", fn))
                    raise UapiError(errno.EIO, "internal error in core") from None
                finally:
                    if getattr(self.emulator, "watch_gen", 0) != self._watch_gen:
                        self._sync_watches()
        finally:
            if self._ready:
                self._run_ready()

    def _run_ready(self):
        with self.lock:
            jobs, self._ready = self._ready, []
        for job in jobs:
            try:
                job()
            except Exception:
                log.exception("continuation %r failed", job)

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
        r = self._core(h.file.ioctl, caller, cmd, arg)
        if caller.returned:
            self._publish(h, caller)
        return int(r or 0)

    # -- fds returned by ioctls (docs/nodes.md, "Ioctls that return file descriptors") --------
    def _publish(self, h, caller):
        """Give every object core returned as an fd (a core.fds.ReturnedFd:
        it is the node's target) a node under ``fds/`` and remember the
        paths for the calling thread (IOMMUFS_FD_PATH)."""
        paths = []
        with self.lock:
            for obj in caller.returned:
                node = self.tree.add_dynamic(obj, caller.uid)
                obj.on_close = lambda node=node: self.tree.remove(node)
                obj.on_change = lambda node=node: self._notify_node(node)
                paths.append(self.tree.path(node.ino))
        h.returned[caller.tid] = paths

    def _notify_node(self, node):
        for h in list(self.handles.values()):
            if h.node is node:
                self._notify(h)

    def _fd_path(self, h, tid, arg):
        """IOMMUFS_FD_PATH (docs/nodes.md): EFAULT, EINVAL size, ENOENT no such fd."""
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

    def seekable(self, fh):
        """Whether open file ``fh`` is opened seekable (its offsets mean
        something: a VFIO node's regions)."""
        h = self.handles.get(fh)
        return h is not None and h.file.seekable

    def open(self, req, ino, flags):
        """open() of node ``ino`` with open ``flags`` -> the new fh (int).

        ENOENT unknown inode; EISDIR a directory; core's errno for the
        node's open (core.emulator.Emulator.open).
        """
        node = self.tree.get(ino)
        if node is None:
            raise UapiError(errno.ENOENT, f"inode {ino}")
        if node.is_dir:
            raise UapiError(errno.EISDIR, node.name)
        file = self._core(self.emulator.open, node.target, _caller(req), flags)
        hid = self._new_id()
        h = self.handles[hid] = Handle(hid, node, file)
        # Core calls this (core lock held) when the file's poll answer changes.
        file.on_change = lambda: self._notify(h)
        return hid

    def release(self, fh):
        """Last close of open file ``fh``: release its core file (unless
        closed synchronously already) and drop its poll handle."""
        h = self.handles.pop(fh, None)
        if h is None:
            return
        self.port.cancel_owned(h)
        self._unsubscribe(h)
        self._drop_poll(h)
        if not h.closed:
            h.closed = True
            self._core(h.file.release)

    def _sync_close(self, h):
        if not h.closed:
            h.closed = True
            self._core(h.file.release)
        return 0

    def shutdown(self):
        """Unmount: release every open file, then emulator.shutdown()."""
        for h in list(self.handles.values()):
            self._unsubscribe(h)
            self._drop_poll(h)
            if not h.closed:
                h.closed = True
                try:
                    self._core(h.file.release)
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
    def _is_private(self, f, cmd):
        """A project-private number the transport answers (not the file's own)."""
        return cmd >> 8 == PRIVATE_TYPE and (not f.own_private or cmd in TRANSPORT_IOCTLS)

    def ioctl(self, req, fh, cmd, argp, flags):
        """A real ioctl(fd, cmd, arg): the result (int >= 0), UapiError, or
        DEFERRED. ``argp``: the caller's pointer (int); ``flags``: FUSE_IOCTL_*."""
        h = self.handles.get(fh)
        if h is None:
            raise UapiError(errno.EBADF, f"no open file {fh}")
        f = h.file
        if cmd == NULL and NULL in f.transport_ioctls:
            # The benchmark's baseline: nothing but this branch on the way.
            if h.closed:
                raise UapiError(errno.EBADF, "closed")
            return 0
        if cmd > 0xFFFF:
            raise UapiError(errno.ENOTTY, f"{cmd:#x} is not an _IO command")
        caller = _caller(req)
        arg = MemArg(caller.mem, argp)
        if self._is_private(f, cmd):
            return self._private(h, caller.tid, caller.uid, cmd, arg)
        if f.ioctl is None:
            raise UapiError(errno.ENOTTY, f"no ioctl {cmd:#x} on {h!r}")
        if h.closed:
            raise UapiError(errno.EBADF, "closed synchronously")
        try:
            return self._core_ioctl(h, caller, cmd, arg)
        except NotYet as n:
            return self._defer(req, self._ioctl_attempt(h, caller, cmd, arg), n)

    def _ioctl_attempt(self, h, caller, cmd, arg):
        return self._attempt(lambda: ("ioctl", self._core_ioctl(h, caller, cmd, arg)),
                             lambda resume: ("ioctl", int(self._core(resume) or 0)),
                             lambda err: ("err", err), caller)

    @staticmethod
    def _attempt(call, resumed, failed, caller):
        """One try of a request of ``caller`` (its ``caller`` attribute),
        for :meth:`_retry`: ``call()`` (or, once core gave a Wait with
        ``resume``, ``resumed(resume)``) -> its answer; ``("wait",
        notyet)``; or ``failed(errno)`` for a UapiError."""
        step = [call]

        def attempt():
            try:
                return step[0]()
            except UapiError as e:
                return failed(e.errno)
            except NotYet as n:
                if isinstance(n, Wait) and n.resume is not None:
                    # Bind the continuation now: Python unbinds ``n`` after the handler.
                    resume = n.resume
                    step[0] = lambda: resumed(resume)
                return ("wait", n)
        attempt.caller = caller
        return attempt

    def _private(self, h, tid, uid, cmd, arg):
        """The transport's private ioctls (docs/nodes.md) by thread ``tid`` of
        ``uid``: ENOTTY for one the file does not take (and WHOAMI from
        another process on a returned fd, whose kernel twin has no ioctls);
        EACCES, like every uAPI ioctl on the file, for a uid other than the
        opener's (an fd inherited or passed over SCM_RIGHTS must not close
        or probe its owner's objects: issue 8), except WHOAMI from the
        server's own threads, which resolve fds that any uid passes in."""
        f = h.file
        if cmd not in f.transport_ioctls:
            raise UapiError(errno.ENOTTY, f"no ioctl {cmd:#x} on {h!r}")
        if not (cmd == WHOAMI and _own_thread(tid)):
            owner = _owner_uid(h)
            if owner is not None and uid != owner:
                raise UapiError(errno.EACCES, f"{h!r} belongs to uid {owner}")
        if cmd == SYNC_CLOSE:
            return self._sync_close(h)
        if cmd == FD_PATH:
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            return self._fd_path(h, tid, arg)
        if cmd == WHOAMI:
            if not _own_thread(tid):
                if f.returned:
                    raise UapiError(errno.ENOTTY, "no ioctls on a returned fd")
                raise UapiError(errno.EPERM, "WHOAMI is for the server's own threads")
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            return h.id
        if h.closed:
            raise UapiError(errno.EBADF, "closed")
        return 0

    # -- write() and read() ---------------------------------------------------------------
    def write(self, req, fh, data, off=0):
        """write() of ``data`` (bytes) at ``off`` -> bytes accepted, or
        FrameError/UapiError (the write's errno).

        A file that speaks frames takes one whole frame (all of it is
        accepted); the reply goes to the calling thread's slot. A request
        that must wait continues in the background and the write returns at
        once (see devfs.frames: a waiting write would hold the node's inode
        lock). Other files: the file's write (EINVAL without one).
        """
        h = self._handle(fh)
        f = h.file
        if not f.frames or (f.frame_offset is not None and off != f.frame_offset):
            if f.write is None:
                raise UapiError(errno.EINVAL, "no write on this file")
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            return self._core(f.write, _caller(req), bytes(data), off)
        n = len(data)
        if f.frames == REQUEST_FRAMES:
            check_dma_whole(data, self.max_write)
            cmd = argb = None
        else:
            cmd, argb = parse_request(data, self.max_write)
        caller = _caller(req)
        tid = caller.tid
        h.slots.begin(tid)
        try:
            if cmd is None:
                attempt = self._request_attempt(h, caller, bytes(data))
                self._serve_frame(h, tid, attempt, f.failure)
            else:
                self._frame(h, caller, cmd, argb)
        except BaseException:
            h.slots.abort(tid)
            raise
        return n

    def _frame(self, h, caller, cmd, argb):
        tid = caller.tid
        if cmd == frames.CMD_CLOSE:
            cmd = SYNC_CLOSE
        if cmd > 0xFFFF:
            result = -errno.ENOTTY
        elif self._is_private(h.file, cmd):
            farg = FrameArg(argb)
            try:
                result = self._private(h, tid, caller.uid, cmd, farg)
            except UapiError as e:
                result = -e.errno
            argb = bytes(farg.buf)
        elif h.closed:
            result = -errno.EBADF
        else:
            attempt = self._frame_attempt(h, caller, cmd, argb)
            self._serve_frame(h, tid, attempt, lambda err: build_reply(-err, argb))
            return
        self._fill(h, tid, build_reply(result, argb))

    def _serve_frame(self, h, tid, attempt, failure):
        """Run ``attempt`` now; if core says not yet, go on in the background."""
        out = attempt()
        if out[0] == "wait":
            self._background(h, tid, attempt, failure, out[1])
        else:
            self._fill(h, tid, out[1])

    def _frame_attempt(self, h, caller, cmd, argb):
        def reply(run):
            arg = FrameArg(argb)   # fresh per attempt: a retry starts from the bytes sent
            try:
                result = run(arg)
            except UapiError as e:
                result = -e.errno
            extra = self.reply_extra(h, caller, cmd, arg) if result >= 0 else b""
            return ("reply", build_reply(result, arg.buf, extra))

        return self._attempt(lambda: reply(lambda arg: self._core_ioctl(h, caller, cmd, arg)),
                             lambda resume: reply(lambda arg: int(self._core(resume) or 0)),
                             lambda err: ("reply", build_reply(-err, argb)), caller)

    def _request_attempt(self, h, caller, data):
        f = h.file
        # A request waiting for an event goes on with core's continuation.
        return self._attempt(lambda: ("reply", bytes(self._core(f.request, caller, data))),
                             lambda resume: ("reply", bytes(self._core(resume))),
                             lambda err: ("reply", f.failure(err)), caller)

    def reply_extra(self, h, caller, cmd, arg):
        """Extra data of a frame reply (DESIGN.md): the node path of each fd
        the ioctl returned, NUL-terminated, in the order of its fd fields."""
        if not caller.returned:
            return b""
        return b"".join(p.encode() + b"\0" for p in h.returned.get(caller.tid, ()))

    def _fill(self, h, tid, reply):
        pending = h.slots.fill(tid, reply)
        if pending is not None:
            pending.wake()
        self._notify(h)

    def read(self, req, fh, size, off):
        """read() of ``size`` bytes at ``off`` -> bytes, FrameError/UapiError,
        or DEFERRED.

        A file that speaks frames: the calling thread's reply (ENOMSG none,
        ERANGE too small, the reply stays); if its request is still being
        served, the read waits for it (an INTERRUPT ends the wait with
        EINTR, the reply stays). A frame file with a read of its own (a
        driver's events) serves threads with no frame in flight. Other
        files: the file's read (EINVAL without one).
        """
        h = self._handle(fh)
        f = h.file
        tid = req_ident(req)[0]
        if (not f.frames or (f.frame_offset is not None and off != f.frame_offset)
                or (f.read is not None and f.frame_offset is None and not h.slots.holds(tid))):
            if f.read is None:
                raise UapiError(errno.EINVAL, "no read on this file")
            if h.closed:
                raise UapiError(errno.EBADF, "closed synchronously")
            data = self._core(f.read, _caller(req), size, off)
            self._notify(h)
            return data
        reply = h.slots.take(tid, size)
        if isinstance(reply, frames.Pending):
            # Parked, not a trio task: whoever fills the slot answers.
            d = self.port.park(req)
            if not h.slots.wait(tid, lambda: self._answer_parked(h, tid, size, d)):
                self._answer_parked(h, tid, size, d)
            return DEFERRED
        self._notify(h)
        return reply

    def _answer_parked(self, h, tid, size, d):
        if not d.enter_commit():
            return          # interrupted (EINTR sent): the reply stays for the next read
        try:
            got = h.slots.take(tid, size)
        except FrameError as e:
            d.finish("err", e.errno)
            return
        if isinstance(got, frames.Pending):     # pended again meanwhile: wait on
            if not d.leave_commit():
                return
            if not h.slots.wait(tid, lambda: self._answer_parked(h, tid, size, d)):
                self._answer_parked(h, tid, size, d)
            return
        d.finish("buf", got)
        self._notify(h)

    # -- poll ----------------------------------------------------------------------------
    def poll(self, req, fh, ph):
        """poll() of open file ``fh`` -> revents; keeps ``ph`` (if not NULL)
        as the file's newest poll handle (the previous one is destroyed).
        A frame file reports POLLIN while the polling thread's reply waits
        (slots are per thread), else the file's own answer."""
        h = self._handle(fh)
        if ph != ffi.NULL:
            with self._poll_lock:
                old, h.ph = h.ph, ph
                if old is not None:
                    self.port.destroy_pollhandle(old)
        if h.slots is not None and h.slots.ready(req_ident(req)[0]):
            return POLLIN
        return self._core(h.file.poll)

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
    async def _retry(self, attempt, notyet, caller, d=None):
        """Do what core's ``notyet`` asks (resolve the fds of ``caller``,
        or wait for an fd), then run ``attempt`` (it takes the core lock)
        until it answers; returns its answer. With ``d`` (a deferred
        request) the core call is a commit: None if the request was
        answered meanwhile (INTERRUPT)."""
        while True:
            if isinstance(notyet, NeedFds):
                # Off the loop thread: the self-ioctl of resolve_fds is a
                # request to this very mount (fuse-notes §4, §7). Cancellable:
                # a cancelled wait abandons the thread, which only closes its dups.
                caller.fds.update(await trio.to_thread.run_sync(
                    self.resolve_fds, caller.tid, notyet.fds, abandon_on_cancel=True))
            elif notyet is not None:
                await self._wait_blocked(notyet)
            if d is not None and not d.enter_commit():
                self._abandon(notyet)
                return None
            # Once core runs, its result is the answer. Run here, on the trio
            # thread: core calls are short, and a hand-off to a worker thread
            # cost a fifth of a fault round trip (scripts/bench_fault.py).
            out = attempt()
            if out[0] != "wait":
                return out
            notyet = out[1]
            if d is not None and not d.leave_commit():
                self._abandon(notyet)
                return None

    async def _wait_blocked(self, w):
        """Wait until ``w.fd`` is readable, on a dup of it (core may close its
        own fd whenever it likes); if the wait is cancelled, tell core."""
        dup = os.dup(w.fd)
        try:
            await trio.lowlevel.wait_readable(dup)
        except BaseException:
            self._abandon(w)
            raise
        finally:
            os.close(dup)

    def _abandon(self, w):
        abandon = getattr(w, "abandon", None)
        if abandon is not None:
            with self.lock:
                abandon()

    def _defer(self, req, attempt, notyet):
        """Answer ioctl ``req`` later, from trio (see _retry); an INTERRUPT
        answers EINTR while it waits. FUSE_IOCTL holds no inode lock, so the
        ioctl itself may wait."""
        async def work(d):
            out = await self._retry(attempt, notyet, attempt.caller, d)
            if out is not None:
                d.finish(*out)

        # Interrupted before its task started, the work never runs: what it
        # was to wait for is abandoned all the same. Resolving the caller's
        # fds only defers the answer, it never waits on anything: the
        # kernel's ioctl would not return EINTR there (a VMM's BIND did, as
        # its threads' signals came during the resolution), so only a real
        # wait (a DMA waiting for its page response) is interruptible.
        return self.port.defer(req, work, discard=lambda: self._abandon(notyet),
                               interruptible=not isinstance(notyet, NeedFds))

    def _background(self, h, tid, attempt, failure, notyet, pending=None):
        """Serve a frame request after its write() returned: the reply lands
        in ``tid``'s slot (``failure(errno)`` builds it if the work fails).
        Cancelled when the file is released. A wait core can end itself
        (``subscribe``) goes on where core ends it, without trio.
        ``pending``: the slot's Pending when the request waits again."""
        if pending is None:
            pending = h.slots.pend(tid)
        if isinstance(notyet, Wait) and notyet.subscribe is not None:
            self._subscribe(h, tid, attempt, failure, notyet, pending)
            return

        async def work():
            try:
                out = await self._retry(attempt, notyet, attempt.caller)
                reply = out[1]
            except Exception:
                log.exception("background request of %r failed", h)
                reply = failure(errno.EIO)
            if h.slots.fill(tid, reply) is pending:
                pending.wake()
            self._notify(h)

        # Released before its task started, the job never runs: what it was
        # to wait for is abandoned all the same (a fault group's eventfd).
        self.port.spawn(work, owner=h, discard=lambda: self._abandon(notyet))

    def _subscribe(self, h, tid, attempt, failure, w, pending):
        """Follow Wait ``w`` by subscription: when core ends it, the thread
        that ended it runs ``attempt`` again and fills ``tid``'s slot (and
        so answers a read parked on it). Abandoned if the file is released
        first (:meth:`_unsubscribe`)."""
        subs = self._subscribed.setdefault(h, {})

        def go_on():
            if subs.pop(key, None) is None:
                return              # abandoned meanwhile
            try:
                out = attempt()
            except Exception:
                log.exception("continuation of %r failed", h)
                out = ("reply", failure(errno.EIO))
            if out[0] == "wait":
                self._background(h, tid, attempt, failure, out[1], pending)
                return
            if h.slots.fill(tid, out[1]) is pending:
                pending.wake()
            self._notify(h)

        key = go_on
        subs[key] = w
        with self.lock:
            now = w.subscribe(lambda: self._ready.append(go_on))
        if now:
            go_on()

    def _unsubscribe(self, h):
        """The file is released: give up its subscribed waits (core is told)."""
        subs = self._subscribed.pop(h, None)
        if subs:
            waits = list(subs.values())
            subs.clear()            # a continuation already queued finds itself gone
            for w in waits:
                self._abandon(w)

    def resolve_fds(self, tid, fds):
        """``{fd: object or errno}`` for the fd numbers of thread ``tid``'s
        process that core asked for (``fds``: [(fd, file_type)], from
        core.files.NeedFds), as core.caller.Caller wants them in ``fds``:
        each must be an open file of this mount whose node opens files of
        ``file_type`` (VFIO_DEVICE_BIND_IOMMUFD's ``iommufd``: the ``iommu``
        node, giving its Context; IOMMU_TEST_CMD's access fd: an
        ``fds/access-N`` node, giving its core.iommufd.selftest.AccessFile).

        Runs on a worker thread, never the loop thread: pidfd_getfd takes a
        duplicate of the caller's fd; it must be a file of this mount (fstat:
        st_dev, st_ino) of such a node, and an IOMMUFS_WHOAMI ioctl on the
        duplicate (served by the loop thread) names the open file.
        Errnos: EBADF not an open fd (or process gone, or synchronously
        closed), EBADFD not such a node of this mount.
        """
        return {fd: self._resolve(tid, fd, file_type) for fd, file_type in fds}

    def _resolve(self, tid, fd, file_type):
        # fd fields are read as the structs have them (u32 access ids): past
        # INT_MAX no fd can be open, as the kernel's fdget says.
        if not 0 <= fd <= 0x7FFFFFFF:
            return errno.EBADF
        try:
            pidfd = os.pidfd_open(tgid_of(tid))
        except (OSError, ValueError, UapiError):
            return errno.EBADF
        try:
            dup = native.iofs_pidfd_getfd(pidfd, fd, 0)
        finally:
            os.close(pidfd)
        if dup < 0:
            return errno.EBADF
        if file_type is Eventfd:
            return take_eventfd(dup)
        if file_type is CallerFile:
            # Any open file (MAP_FILE's memfd): core owns the duplicate; one
            # of this mount (a dma-buf fd) is resolved to its object below.
            try:
                ours = self.st_dev is not None and os.fstat(dup).st_dev == self.st_dev
            except OSError:
                ours = False
            if not ours:
                return CallerFile(dup)
        try:
            st = os.fstat(dup)
            if self.st_dev is None or st.st_dev != self.st_dev or not stat.S_ISREG(st.st_mode):
                return errno.EBADFD
            node = self.tree.get(st.st_ino)
            if node is None or node.target is None or not (
                    file_type is CallerFile or issubclass(node.target.file_type, file_type)):
                return errno.EBADFD
            try:
                hid = fcntl.ioctl(dup, WHOAMI)
            except OSError as e:
                return errno.EBADF if e.errno == errno.EBADF else errno.EBADFD
            h = self.handles.get(hid)
            if h is None or h.node is not node:
                return errno.EBADFD
            if h.closed:
                return errno.EBADF
            return h.file.fget()
        except OSError:
            return errno.EBADFD
        finally:
            os.close(dup)
