"""One FUSE session: mount, the request loop, deferred replies, INTERRUPT.

How the pieces fit (DESIGN.md, Transport; fuse-notes §11)::

    kernel ──/dev/fuse──► loop thread ("iommufs-fuse")
                            iofs_session_loop() in C, GIL released while it
                            waits; libfuse calls the extern "Python" callbacks
                            below, which ask the Server and reply at once.
                            │ a request that must wait: Session.defer()
                            │   registers an INTERRUPT callback, then
                            │   trio_token.run_sync_soon(spawn)
                            ▼
                          trio (the thread that called Session.run)
                            one task per deferred request, in the session's
                            nursery, inside its own CancelScope; worker
                            threads (trio.to_thread) for fd resolution and
                            core calls; the task replies when done.
                            Session.spawn(): background work of a frame whose
                            write() already returned (the read waits instead).
                          Session.park(): a request answered later by any
                            thread (a read waiting for its frame's reply),
                            with no trio task.

- The common path never touches trio: a trio wake-up per request would cost
  about 20 µs, three times the request (fuse-notes §11).
- Core is entered only with the core lock held (devfs.server.CORE_LOCK).
- Every request gets exactly one reply: an immediate one from the callback,
  or a deferred one, claimed under ``_dlock`` by whichever of "the work
  finished", "INTERRUPT arrived" and "the session is shutting down" comes
  first (:class:`Deferred`). A Python exception in a callback is logged and
  answered EIO; the loop keeps serving.

INTERRUPT: libfuse calls :func:`iofs_interrupt` on the loop thread (at once
from ``fuse_req_interrupt_func`` if the INTERRUPT came first). A deferred
request still waiting is answered EINTR there and then, and its task's cancel
scope is cancelled. One already committing (core is running its call) is
left to finish: its result is the reply, as a kernel ioctl that has started
completes. libfuse holds a reference on the request while the interrupt
callback runs, so replying from a task on another thread at the same moment
is safe; our claim makes sure only one of them replies.

Shutdown (:meth:`Session.run` cancelled, the mount went away, or it was
detached by a lazy unmount while files were open): stop the
loop thread (exit flag + a real-time signal that makes its read() return
EINTR), answer waiting deferred requests ENOTCONN,
wait for committing ones, close every open file in core, unmount, destroy.
"""
import errno
import logging
import os
import select
import signal
import threading
import time

import trio

from core.errors import UapiError

from .frames import FrameError
from .fuse import DEFAULT_OPTIONS, NULL, ffi, fill_stat, lib, make_args, timeouts
from .server import DEFERRED

log = logging.getLogger("iommufs.devfs")

WAITING, COMMITTING, DONE = 0, 1, 2


class Deferred:
    """A request whose reply comes later, from trio or from the thread that
    has the answer (:meth:`Session.park`), or EINTR on interrupt.

    States: WAITING (interruptible), COMMITTING (core is running the call;
    an INTERRUPT is only noted), DONE (replied). Transitions happen under the
    session's ``_dlock``; the reply is sent by whoever made the transition to
    DONE, after releasing the lock.
    """

    __slots__ = ("session", "req", "id", "state", "interrupted", "scope")

    def __init__(self, session, req, did):
        self.session = session
        self.req = req
        self.id = did
        self.state = WAITING
        self.interrupted = False
        self.scope = None

    def enter_commit(self):
        """WAITING -> COMMITTING. False if the request is already answered
        (interrupted or shut down): the caller must then do nothing more."""
        with self.session._dlock:
            if self.state != WAITING:
                return False
            self.state = COMMITTING
            return True

    def leave_commit(self):
        """COMMITTING -> WAITING (the call must wait again). If an INTERRUPT
        came meanwhile, answer EINTR now and return False."""
        s = self.session
        with s._dlock:
            if not self.interrupted:
                self.state = WAITING
                return True
            self._done_locked()
        s._send(self.req, "err", errno.EINTR)
        return False

    def finish(self, kind, value):
        """Reply (COMMITTING -> DONE): ``kind`` "ioctl" (result), "write"
        (bytes accepted), "buf" (bytes), "err" (errno)."""
        s = self.session
        with s._dlock:
            if self.state != COMMITTING:
                log.error("finish of %s request %d in state %d", kind, self.id, self.state)
                return
            self._done_locked()
        s._send(self.req, kind, value)

    def fail(self, err, committing=False):
        """Answer ``err`` if the request is still WAITING (or COMMITTING when
        ``committing``: the committer itself failed). Returns True if it did."""
        s = self.session
        with s._dlock:
            if self.state == DONE or (self.state == COMMITTING and not committing):
                return False
            self._done_locked()
        s._send(self.req, "err", err)
        return True

    def _done_locked(self):
        self.state = DONE
        self.session._deferred.pop(self.id, None)


class _Job:
    """Background work not bound to a request (a frame served after its
    write returned), cancelled with its ``owner`` (an open file).
    ``discard``: called instead of ``work`` if the job is dropped before it
    started (what the work would have released in its ``finally``)."""

    __slots__ = ("work", "owner", "scope", "cancelled", "discard")

    def __init__(self, work, owner, discard=None):
        self.work = work
        self.owner = owner
        self.scope = None
        self.cancelled = False
        self.discard = discard

    def drop(self):
        """The job will never run: release what it holds."""
        discard, self.discard = self.discard, None
        _discard(discard)

    def cancel(self):           # trio thread
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def _discard(fn):
    """Call the ``discard`` of work that will never run (None: nothing)."""
    if fn is not None:
        try:
            fn()
        except Exception:
            log.exception("discarding background work")


_live_sessions = set()
_only_session = None     # the session, while exactly one runs in this process


def _session_of(req):
    # The common case skips a C call per request (one is ~0.3 µs with the
    # GIL released and retaken around it).
    s = _only_session
    if s is not None:
        return s
    return ffi.from_handle(lib.fuse_req_userdata(req))


def _register(session, live):
    global _only_session
    if live:
        _live_sessions.add(session)
    else:
        _live_sessions.discard(session)
    _only_session = next(iter(_live_sessions)) if len(_live_sessions) == 1 else None


def _errno_of(exc):
    """The errno a request failing with ``exc`` answers: its own, or EIO
    (logged: an exception other than UapiError/FrameError is a bug)."""
    if isinstance(exc, (UapiError, FrameError)) and 0 < exc.errno < 4096:
        return exc.errno
    log.error("internal error serving a request", exc_info=exc)
    return errno.EIO


def _reply_error(req, exc):
    """The one place an exception becomes a reply: its errno, or EIO."""
    lib.fuse_reply_err(req, _errno_of(exc))


def _mountinfo(mountpoint):
    """The last (topmost) /proc/self/mountinfo entry mounted exactly at
    ``mountpoint`` as ``(st_dev, fstype)``, or None.

    Read from procfs rather than by stat(), which would be a request to the
    mount itself (and hang or fail on a dead one). For the same reason the
    path is not resolved here (realpath would lstat it): pass a canonical
    path, resolved before mounting.
    """
    want = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                parts = line.split()
                if _unescape(parts[4]) != want:
                    continue
                major, minor = parts[2].split(b":")
                sep = parts.index(b"-")
                found = (os.makedev(int(major), int(minor)), os.fsdecode(parts[sep + 1]))
    except (OSError, ValueError, IndexError):
        return None
    return found


def mount_dev(mountpoint):
    """st_dev of the mount at ``mountpoint`` (from mountinfo), or None."""
    info = _mountinfo(mountpoint)
    return info and info[0]


def _attached(dev):
    """True while a mount of device ``dev`` is in this mount namespace (by
    its mountinfo major:minor, wherever it is mounted)."""
    want = f"{os.major(dev)}:{os.minor(dev)}".encode()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return any(line.split()[2] == want for line in f)
    except (OSError, IndexError):
        return True


def mount_fstype(mountpoint):
    """Filesystem type of the mount at ``mountpoint`` (e.g. "fuse.iommufs"), or None."""
    info = _mountinfo(mountpoint)
    return info and info[1]


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def is_mounted(mountpoint):
    """True if something is mounted exactly at ``mountpoint`` (mountinfo)."""
    return mount_dev(mountpoint) is not None


class Session:
    """A mount of ``server`` at ``mountpoint``.

    ``options``: FUSE mount options (default allow_other,
    default_permissions, auto_unmount, fsname/subtype iommufs); ``debug``:
    libfuse's request trace on stderr.

    ``await session.run()`` mounts and serves until cancelled or until the
    mount goes away (``fusermount3 -u``), then tears down and returns. With
    ``nursery.start(session.run)`` it returns once the mount is up.
    """

    def __init__(self, server, mountpoint, options=DEFAULT_OPTIONS, debug=False):
        self.server = server
        # Resolved now, while nothing is mounted there: later, any stat of the
        # mount point from the serving process would wait for itself.
        self.mountpoint = os.path.realpath(mountpoint)
        self.options = tuple(options)
        self.debug = debug
        self.proto = None            # (major, minor) negotiated at init
        self._se = NULL
        self._handle = ffi.new_handle(self)
        self._ops = None
        self._token = None
        self._nursery = None
        self._thread = None
        self._wake_sig = -1
        self._loop_ended = None
        self._dlock = threading.Lock()
        self._deferred = {}
        self._jobs = {}
        self._ids = 0
        server.port = self

    # -- lifecycle -------------------------------------------------------------------
    def _open(self):
        ops = ffi.new("struct fuse_lowlevel_ops *")
        ops.init = lib.iofs_init
        ops.lookup = lib.iofs_lookup
        ops.forget = lib.iofs_forget
        ops.getattr = lib.iofs_getattr
        ops.open = lib.iofs_open
        ops.read = lib.iofs_read
        ops.write = lib.iofs_write
        ops.flush = lib.iofs_flush
        ops.release = lib.iofs_release
        ops.opendir = lib.iofs_opendir
        ops.readdir = lib.iofs_readdir
        ops.releasedir = lib.iofs_releasedir
        ops.statfs = lib.iofs_statfs
        ops.ioctl = lib.iofs_ioctl_op
        ops.poll = lib.iofs_poll
        self._ops = ops
        argv = ["iommufs", "-o", ",".join(self.options)] + (["-d"] if self.debug else [])
        args, keep = make_args(argv)
        se = lib.fuse_session_new(args, ops, ffi.sizeof("struct fuse_lowlevel_ops"), self._handle)
        del keep
        if se == NULL:
            raise OSError(errno.EINVAL, f"fuse_session_new refused options {argv[2:]}")
        if lib.fuse_session_mount(se, os.fsencode(self.mountpoint)) != 0:
            lib.fuse_session_destroy(se)
            raise OSError(errno.EIO, f"cannot mount FUSE at {self.mountpoint}")
        self._se = se
        _register(self, True)
        self.server.st_dev = mount_dev(self.mountpoint)
        self._wake_sig = lib.iofs_wake_signal()
        if self._wake_sig < 0:
            log.warning("no wake signal (%s): unmount will wait for the mount to go",
                        os.strerror(-self._wake_sig))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Mount, serve, and tear down (see the module docstring).

        Raises OSError if the mount fails. Must run in a trio thread that
        stays responsive (deferred replies and INTERRUPT go through it).
        """
        self._token = trio.lowlevel.current_trio_token()
        self._loop_ended = trio.Event()
        self._open()
        self._thread = threading.Thread(target=self._loop_main, name="iommufs-fuse", daemon=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._thread.start()
                task_status.started(self)
                nursery.start_soon(self._watch_detach)
                await self._loop_ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._teardown()

    async def _watch_detach(self):
        """End the session once the mount is detached from the namespace.

        A lazy unmount (``fusermount3 -u -z``: what ``iommufs umount`` does
        while files are still open, since a plain unmount is EBUSY then)
        detaches the mount at once but keeps the connection, and so this
        server, until the last client closes its file, which may be never.
        A user's unmount must end the server: the teardown closes
        /dev/fuse, and files still open get ENOTCONN, as when a server dies.

        /proc/self/mountinfo reports a change of the namespace's mounts as
        EPOLLPRI (and is always EPOLLIN): an epoll of its own that asks only
        for EPOLLPRI is readable exactly then, which trio can wait for.
        """
        dev = self.server.st_dev
        if dev is None:
            return
        mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        ep = select.epoll()
        try:
            ep.register(mounts, select.EPOLLPRI)
            while _attached(dev):
                await trio.lowlevel.wait_readable(ep.fileno())
                ep.poll(0)
        finally:
            ep.close()
            os.close(mounts)
        log.info("the mount was detached (lazy unmount): stopping")
        self._loop_ended.set()

    def _loop_main(self):
        try:
            rc = lib.iofs_session_loop(self._se)
            if rc < 0:
                log.error("FUSE loop ended: %s", os.strerror(-rc))
        except BaseException:
            log.exception("FUSE loop thread failed")
        finally:
            self._call_soon(self._loop_ended.set)

    async def _teardown(self):
        if self._se == NULL:
            return
        lib.fuse_session_exit(self._se)
        await self._stop_loop_thread()
        # No request is read any more: answer the deferred ones still waiting.
        with self._dlock:
            waiting = list(self._deferred.values())
        for d in waiting:
            d.fail(errno.ENOTCONN)
        end = time.monotonic() + 5.0
        while self._deferred and time.monotonic() < end:
            await trio.sleep(0.01)     # committing: core is finishing their call
        try:
            await trio.to_thread.run_sync(self.server.shutdown)
        except Exception:
            log.exception("closing open files at unmount")
        lib.fuse_session_unmount(self._se)
        if self._deferred:
            # A reply may still be sent on this session: leak it rather than
            # let a late reply touch freed memory.
            log.error("%d deferred requests never finished; session leaked", len(self._deferred))
        else:
            lib.fuse_session_destroy(self._se)
            _register(self, False)
        self._se = NULL

    async def _stop_loop_thread(self):
        # The exit flag is set. Kick the thread out of its blocking read()
        # until it notices: a kick that lands just before read() is lost, so
        # repeat. A thread busy in a callback finishes it first.
        t = self._thread
        waited = 0.0
        while t.is_alive():
            if self._wake_sig > 0:
                try:
                    signal.pthread_kill(t.ident, self._wake_sig)
                except ProcessLookupError:
                    break
            await trio.to_thread.run_sync(t.join, 0.02)
            waited += 0.02
            if 5.0 <= waited < 5.02:
                log.warning("the FUSE loop thread does not stop; still waiting")

    def _call_soon(self, fn, *args):
        try:
            self._token.run_sync_soon(fn, *args)
            return True
        except trio.RunFinishedError:
            return False

    # -- deferred requests (called by the Server on the loop thread) -------------------
    def defer(self, req, work, discard=None, interruptible=True):
        """Answer ``req`` later: ``await work(d)`` runs in a trio task and
        replies through ``d`` (:class:`Deferred`). Returns DEFERRED; never
        raises once the request is registered. If the request is answered
        (INTERRUPT, unmount) before the task started, ``work`` never runs
        and ``discard()`` (if given) is called instead. Not ``interruptible``:
        an INTERRUPT is ignored and the request runs to its answer, as a
        kernel ioctl that never sleeps interruptibly does (BIND resolving
        its iommufd must not fail with EINTR because a signal came by).
        """
        with self._dlock:
            self._ids += 1
            d = Deferred(self, req, self._ids)
            self._deferred[d.id] = d
        # If the INTERRUPT is already here, this calls iofs_interrupt at once.
        if interruptible:
            lib.fuse_req_interrupt_func(req, lib.iofs_interrupt, ffi.cast("void *", d.id))
        if not self._call_soon(self._spawn, d, work, discard):
            d.fail(errno.ENOTCONN)
            _discard(discard)
        return DEFERRED

    def park(self, req):
        """Answer ``req`` later from any thread, with no trio task: the
        returned Deferred is replied through ``enter_commit()`` then
        ``finish()`` by whoever has the answer; an INTERRUPT answers EINTR
        meanwhile, and shutdown ENOTCONN."""
        with self._dlock:
            self._ids += 1
            d = Deferred(self, req, self._ids)
            self._deferred[d.id] = d
        lib.fuse_req_interrupt_func(req, lib.iofs_interrupt, ffi.cast("void *", d.id))
        return d

    def _spawn(self, d, work, discard=None):
        if d.state == DONE:
            _discard(discard)
            return
        if self._nursery is None:
            d.fail(errno.ENOTCONN)
            _discard(discard)
            return
        try:
            self._nursery.start_soon(self._run_deferred, d, work, discard)
        except RuntimeError:      # the nursery is closing
            d.fail(errno.ENOTCONN)
            _discard(discard)

    async def _run_deferred(self, d, work, discard=None):
        try:
            with trio.CancelScope() as scope:
                d.scope = scope
                if d.state == DONE:
                    _discard(discard)
                    return
                await work(d)
            if d.state == WAITING and not scope.cancelled_caught:
                log.error("deferred request %d ended without a reply", d.id)
                d.fail(errno.EIO)
        except Exception:
            log.exception("deferred request %d failed", d.id)
            d.fail(errno.EIO, committing=True)
        finally:
            d.fail(errno.ENOTCONN)   # cancelled by shutdown; no-op once answered

    def spawn(self, work, owner=None, discard=None):
        """Run ``await work()`` in a trio task (from any thread); it is
        cancelled by :meth:`cancel_owned` of ``owner`` and at unmount. If it
        is cancelled before it started, ``work`` never runs and ``discard()``
        (if given) is called instead, so that what the work was handed (a
        dup of an fd) is released all the same."""
        job = _Job(work, owner, discard)
        with self._dlock:
            self._jobs.setdefault(owner, set()).add(job)
        self._call_soon(self._start_job, job)

    def cancel_owned(self, owner):
        """Cancel the background work of ``owner`` (from any thread)."""
        with self._dlock:
            jobs = self._jobs.pop(owner, ())
        for job in jobs:
            self._call_soon(job.cancel)

    def _start_job(self, job):
        if job.cancelled or self._nursery is None:
            job.drop()
            self._forget_job(job)
            return
        try:
            self._nursery.start_soon(self._run_job, job)
        except RuntimeError:      # the nursery is closing
            job.drop()
            self._forget_job(job)

    async def _run_job(self, job):
        try:
            with trio.CancelScope() as job.scope:
                if job.cancelled:
                    job.drop()
                else:
                    job.discard = None       # from here on the work releases its own
                    await job.work()
        except Exception:
            log.exception("background work failed")
        finally:
            self._forget_job(job)

    def _forget_job(self, job):
        with self._dlock:
            jobs = self._jobs.get(job.owner)
            if jobs is not None:
                jobs.discard(job)
                if not jobs:
                    del self._jobs[job.owner]

    def _interrupt(self, req, did):
        with self._dlock:
            d = self._deferred.get(did)
            if d is None:
                return
            if d.state == COMMITTING:
                d.interrupted = True
                return
            d._done_locked()
        lib.fuse_reply_err(req, errno.EINTR)
        self._call_soon(_cancel, d)

    # -- replies and poll handles ------------------------------------------------------
    def _send(self, req, kind, value):
        if kind == "ioctl":
            lib.fuse_reply_ioctl(req, value, NULL, 0)
        elif kind == "write":
            lib.fuse_reply_write(req, value)
        elif kind == "buf":
            lib.fuse_reply_buf(req, value, len(value))
        else:
            lib.fuse_reply_err(req, value)

    def notify_poll(self, ph):
        """Wake pollers of the file whose newest poll handle is ``ph``."""
        lib.fuse_lowlevel_notify_poll(ph)

    def destroy_pollhandle(self, ph):
        lib.fuse_pollhandle_destroy(ph)


def _cancel(d):
    if d.scope is not None:
        d.scope.cancel()


# -- the callbacks (loop thread) ---------------------------------------------------------
# Each one answers its request exactly once: the server computes, then the
# reply is the last statement; any exception before it becomes an errno.

@ffi.def_extern()
def iofs_init(userdata, conn):
    try:
        s = ffi.from_handle(userdata)
        s.server.max_write = conn.max_write
        s.proto = (conn.proto_major, conn.proto_minor)
    except BaseException:
        log.exception("FUSE init")


@ffi.def_extern()
def iofs_lookup(req, parent, name):
    try:
        s = _session_of(req)
        node = s.server.tree.lookup(parent, os.fsdecode(ffi.string(name)))
        if node is None:
            raise UapiError(errno.ENOENT)
        e = ffi.new("struct fuse_entry_param *")
        e.ino = node.ino
        e.generation = 1
        fill_stat(e.attr, node)
        e.entry_timeout, e.attr_timeout = timeouts(node)
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_entry(req, e)


@ffi.def_extern()
def iofs_forget(req, ino, nlookup):
    # Nodes live as long as the mount: nothing to forget.
    lib.fuse_reply_none(req)


@ffi.def_extern()
def iofs_getattr(req, ino, fi):
    try:
        node = _session_of(req).server.tree.get(ino)
        if node is None:
            raise UapiError(errno.ENOENT)
        st = ffi.new("struct stat *")
        fill_stat(st, node)
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_attr(req, st, timeouts(node)[1])


@ffi.def_extern()
def iofs_open(req, ino, fi):
    try:
        s = _session_of(req)
        fh = s.server.open(req, ino, fi.flags)
        fi.fh = fh
        fi.direct_io = 1
        # Offsets mean regions on a VFIO node (index << 40): seekable there.
        fi.nonseekable = 0 if s.server.seekable(fh) else 1
        fi.keep_cache = 0
    except BaseException as exc:
        _reply_error(req, exc)
        return
    if lib.fuse_reply_open(req, fi) == -errno.ENOENT:
        # The open was interrupted: the kernel will never release this fh.
        try:
            s.server.release(fh)
        except BaseException:
            log.exception("release of an interrupted open")


@ffi.def_extern()
def iofs_read(req, ino, size, off, fi):
    try:
        data = _session_of(req).server.read(req, fi.fh, size, off)
    except BaseException as exc:
        _reply_error(req, exc)
        return
    if data is not DEFERRED:
        lib.fuse_reply_buf(req, data, len(data))


@ffi.def_extern()
def iofs_write(req, ino, buf, size, off, fi):
    try:
        n = _session_of(req).server.write(req, fi.fh, ffi.buffer(buf, size)[:], off)
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_write(req, n)


@ffi.def_extern()
def iofs_flush(req, ino, fi):
    # Every close() of an fd sends FLUSH; only the last one brings RELEASE.
    lib.fuse_reply_err(req, 0)


@ffi.def_extern()
def iofs_release(req, ino, fi):
    try:
        _session_of(req).server.release(fi.fh)
    except BaseException as exc:
        # The file is gone whatever we answer; log and say so.
        _reply_error(req, exc)
        return
    lib.fuse_reply_err(req, 0)


@ffi.def_extern()
def iofs_opendir(req, ino, fi):
    try:
        node = _session_of(req).server.tree.get(ino)
        if node is None:
            raise UapiError(errno.ENOENT)
        if not node.is_dir:
            raise UapiError(errno.ENOTDIR)
        fi.fh = 0
        fi.cache_readdir = 0 if node.dynamic else 1
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_open(req, fi)


@ffi.def_extern()
def iofs_readdir(req, ino, size, off, fi):
    try:
        tree = _session_of(req).server.tree
        entries = tree.listdir(ino)
        buf = ffi.new("char[]", size)
        st = ffi.new("struct stat *")
        pos = 0
        for i in range(off, len(entries)):
            name, node = entries[i]
            st.st_ino = node.ino
            st.st_mode = node.mode
            n = lib.fuse_add_direntry(req, buf + pos, size - pos, os.fsencode(name), st, i + 1)
            if n > size - pos:
                break
            pos += n
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_buf(req, buf, pos)


@ffi.def_extern()
def iofs_releasedir(req, ino, fi):
    lib.fuse_reply_err(req, 0)


@ffi.def_extern()
def iofs_statfs(req, ino):
    try:
        s = _session_of(req)
        st = ffi.new("struct statvfs *")
        st.f_bsize = st.f_frsize = 4096
        st.f_files = len(s.server.tree.nodes)
        st.f_namemax = 255
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_statfs(req, st)


@ffi.def_extern(error=-errno.EIO)
def iofs_ioctl(req, fh, cmd, arg, flags):
    # Called by iofs_ioctl_op (C) with plain ints; C sends the reply: the
    # result (>= 0), -errno, or nothing for IOFS_DEFERRED.
    try:
        r = _session_of(req).server.ioctl(req, fh, cmd, arg, flags)
    except BaseException as exc:
        return -_errno_of(exc)
    return lib.IOFS_DEFERRED if r is DEFERRED else r


@ffi.def_extern()
def iofs_poll(req, ino, fi, ph):
    try:
        revents = _session_of(req).server.poll(req, fi.fh, ph)
    except BaseException as exc:
        _reply_error(req, exc)
        return
    lib.fuse_reply_poll(req, revents)


@ffi.def_extern()
def iofs_interrupt(req, data):
    try:
        _session_of(req)._interrupt(req, int(ffi.cast("uintptr_t", data)))
    except BaseException:
        log.exception("INTERRUPT handling")
