"""The file protocol: core's face to the transport, as the kernel's
``file_operations``.

Every node of a mount is a :class:`Node`: ``open(caller, flags)`` makes a
:class:`File`, one per open, and the transport calls that file without
knowing what it is: ``ioctl``, ``read`` and ``write`` (with offsets),
``poll``, ``release``. Adding a kind of node or fd is a File subclass in the
module of its object plus its Node: nothing in devfs or the Emulator names
it.

How a file's write() and read() carry data is part of the wire protocol
(DESIGN.md), so each file says which it speaks (:attr:`File.frames`); the
transport does the framing and the per-thread reply slots.

A call that cannot finish now answers with a typed "not yet" (h11's
NEED_DATA as a type), raised from wherever core finds out:

- :class:`Wait`: retry (or ``resume()``) once ``fd`` is readable;
- :class:`NeedFds`: the argument names fd numbers of the caller that the
  transport must resolve first (it cannot on the thread that serves the
  request: fuse-notes §4, §7); it fills ``caller.fds`` and calls again.

So the transport never decodes a uAPI struct itself.
"""
import errno
import os
import select

from . import uapi, wire
from .errors import UapiError

POLLIN = select.POLLIN | select.POLLRDNORM
POLLOUT = select.POLLOUT | select.POLLWRNORM

#: The transport's private ioctls (docs/nodes.md, "Private ioctls"), for
#: :attr:`File.transport_ioctls`.
NULL = uapi.IOMMUFS_NULL
SYNC_CLOSE = uapi.IOMMUFS_SYNC_CLOSE
WHOAMI = uapi.IOMMUFS_WHOAMI
FD_PATH = uapi.IOMMUFS_FD_PATH
TRANSPORT_IOCTLS = frozenset((NULL, SYNC_CLOSE, WHOAMI, FD_PATH))

#: :attr:`File.frames` values.
IOCTL_FRAMES = "ioctl"       # IOFS frames carrying the file's ioctls (DESIGN.md)
REQUEST_FRAMES = "request"   # one request per write(), see File.request (IODM)


class NotYet(Exception):
    """Base of core's "not yet" answers: the request is neither done nor
    failed; the transport does what the subclass says and calls again."""


class Wait(NotYet):
    """Wait until ``fd`` is readable, then call ``resume()`` (core lock
    held) for the answer, or, without ``resume``, make the same call again.
    ``abandon()`` (if any) tells core the wait was given up (INTERRUPT, the
    file released).

    A wait that core itself ends (a page response) may also be followed
    without an fd: ``subscribe(fn)`` asks core to call ``fn()`` (core lock
    held, on whichever thread ends the wait) once it can go on, and answers
    True instead if it can already; ``subscribe`` is None where core cannot.
    The transport then resumes right where the event arrived.
    """

    subscribe = None

    def __init__(self, fd, resume=None, abandon=None):
        super().__init__(fd)
        self.fd = fd
        self.resume = resume
        self.abandon = abandon


class NeedFds(NotYet):
    """The call needs fd numbers of the caller's process resolved:
    ``fds`` is ``[(fd, file_type), ...]``, each an fd that must be an open
    file of this mount whose :meth:`File.fget` is a ``file_type``. The
    transport puts ``fd -> object or errno`` into ``caller.fds`` and calls
    again (see core.caller.Caller.fd)."""

    def __init__(self, fds):
        super().__init__(fds)
        self.fds = fds


class CallerFile:
    """An open file of the caller's process that is not a file of this
    mount (IOMMU_IOAS_MAP_FILE's ``fd``), as a ``file_type`` of
    :class:`NeedFds`: the transport resolves it to a duplicate descriptor
    ``fd`` of this process, which core then owns (closed with this object
    or by :meth:`close`)."""

    def __init__(self, fd):
        self.fd = fd

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        self.close()


class Eventfd:
    """The interface of a caller's eventfd taken by the transport (for
    ``caller.fd(fd, Eventfd)``: VFIO_DEVICE_SET_IRQS, reference
    vfio-device.md §6): ``signal()`` adds 1 to its counter (an 8-byte
    write), ``close()`` lets it go (idempotent). The transport resolves such
    an fd with pidfd_getfd: EBADF not an open fd of the caller, EINVAL an
    fd that is not an eventfd (the kernel's eventfd_ctx_fdget)."""

    def signal(self):
        raise NotImplementedError

    def fileno(self):
        """A file descriptor that polls readable when the eventfd was
        signalled by its other users (an INTx unmask eventfd: KVM's
        resample fd), or -1 when the sink cannot be watched."""
        return -1

    def drain(self):
        """Reset the counter after it polled readable."""

    def close(self):
        raise NotImplementedError


#: The file offset at which an ioctl-frame file whose offsets mean
#: something else (a VFIO node: regions at ``index << 40``) takes and gives
#: its frames (pwrite/pread there): core.wire.VFIO_FRAME_OFFSET.
FRAME_OFFSET = wire.VFIO_FRAME_OFFSET


class File:
    """One open of a node. The defaults are the VFS's for a file without
    the op (the op None): no ioctl (ENOTTY), no read or write (EINVAL),
    before anything else; poll readable and writable. After a synchronous
    close (IOMMUFS_SYNC_CLOSE: :meth:`release` early) the transport answers
    EBADF to the ops the file has.

    Class attributes the transport reads:

    - ``frames``: None (plain read/write), :data:`IOCTL_FRAMES` or
      :data:`REQUEST_FRAMES`;
    - ``own_private``: the file has project-private commands of its own
      (``_IO(0xF5, nr)`` beyond the transport's); else such numbers are the
      transport's (and ENOTTY if unknown);
    - ``transport_ioctls``: which of the transport's private ioctls it
      answers on this file (IOMMUFS_NULL, SYNC_CLOSE, WHOAMI, FD_PATH);
    - ``returned``: the file of an fd an ioctl returned (docs/nodes.md): a
      number it does not know is ENOTTY, as the kernel's fd has none.

    ``on_change`` is set by the transport: core calls it (core lock held)
    when the file's poll answer may have changed.
    """

    frames = None
    #: With ``frames``: the one file offset frames are written and read at
    #: (:data:`FRAME_OFFSET`), other offsets going to read/write; None: any.
    frame_offset = None
    #: The node is opened seekable (pread/pwrite/lseek mean offsets).
    seekable = False
    own_private = False
    transport_ioctls = frozenset()
    returned = False
    on_change = None
    #: The uid whose file this is (only it may use it: EACCES), or None for
    #: a node anyone may use; the transport holds its private ioctls to it.
    uid = None
    # The ops, where a subclass has them:
    # ioctl(caller, cmd, arg): the result (int >= 0) or UapiError / NotYet;
    #   ``arg``: a core.mm.usermem.MemArg (ioctl()) or FrameArg (frames).
    # read(caller, size, off): bytes; write(caller, data, off): bytes taken.
    ioctl = None
    read = None
    write = None

    def request(self, caller, data):
        """A REQUEST_FRAMES file: one request (bytes, a whole write()) ->
        its reply (bytes) or NotYet."""
        raise UapiError(errno.EINVAL, "no requests")

    def poll(self):
        """The poll mask now (POLLIN/POLLOUT bits); UapiError: POLLERR. The
        frames' part (a thread's reply waiting: POLLIN) is the transport's;
        a frame file is otherwise writable (a request would be accepted)."""
        return POLLOUT if self.frames else POLLIN | POLLOUT

    def release(self):
        """The last close of this open (or a synchronous close): idempotent."""

    def fget(self):
        """What an fd of this file is when a caller passes it in an ioctl."""
        return self

    def changed(self):
        """Tell the transport the poll answer may have changed."""
        if self.on_change is not None:
            self.on_change()


class Node:
    """A node of the mount: ``mode`` (permission bits, e.g. 0o666) and
    ``open(caller, flags)`` -> a File (or UapiError). ``file_type``: the
    type of what the files' :meth:`File.fget` give (how a passed-in fd is
    checked against the node it is). Directories are :class:`Dir`."""

    mode = 0o666
    file_type = File

    def open(self, caller, flags):
        raise UapiError(errno.EISDIR, "a directory")


class Dir(Node):
    """A directory of the node table."""

    mode = 0o755


class Opener(Node):
    """A node whose opens are ``factory(caller, flags)``."""

    def __init__(self, factory, file_type, mode=0o666):
        self.factory = factory
        self.file_type = file_type
        self.mode = mode

    def open(self, caller, flags):
        return self.factory(caller, flags)


class InfoFile(File):
    """An open of ``devices/<name>/info``: the document as it was at open
    (``data``, bytes), read by offset."""

    def __init__(self, data):
        self.data = data

    def read(self, caller, size, off):
        return self.data[off:off + size]

    def write(self, caller, data, off):
        raise UapiError(errno.EBADF, "info is read-only")

    def poll(self):
        return POLLIN
