"""Objects behind the fds that ioctls return (docs/nodes.md, "Ioctls that return
file descriptors"): the fault fd (core.iommufd.fault), the access fd
(core.iommufd.selftest).

The server cannot make an fd in the caller; the transport shows each such
object as a node under ``fds/`` (a :class:`ReturnedFd` is that node: its
``node_kind`` is the name's prefix) and the client opens it; each open is a
:class:`FdOpen` (core.files.File). The lifetime is the fd's: opening the node
is holding the fd, and the fd closes when the node's last open file does
(after at least one open) or, never opened, when its context is closed. An
open fd keeps its iommufd context alive, as the kernel's fds hold a
reference on the iommufd file.
"""
import errno

from .errors import UapiError
from .files import NULL, SYNC_CLOSE, File, Node


class FdOpen(File):
    """One open of a returned fd's node: ``fd`` (the ReturnedFd). Its ops
    are the fd's (``fd.read``, ``fd.write``, ``fd.poll``: None where the
    fd has none); after this open's release (a synchronous close) read and
    write are EBADF and poll is what the fd says of a closed open, while
    other opens of the node go on."""

    returned = True

    def __init__(self, fd):
        self.fd = fd
        self.closed = False
        self.transport_ioctls = fd.transport_ioctls
        if fd.read is None:
            self.read = None
        if fd.write is None:
            self.write = None

    @property
    def uid(self):
        return self.fd.uid

    def _check(self):
        if self.closed:
            raise UapiError(errno.EBADF, "closed synchronously")

    def read(self, caller, size, off):
        self._check()
        return self.fd.read(caller, size)

    def write(self, caller, data, off):
        self._check()
        return self.fd.write(caller, data)

    def poll(self):
        return self.fd.poll(self.closed)

    def release(self):
        if not self.closed:
            self.closed = True
            self.fd.released()

    def fget(self):
        return self.fd


class ReturnedFd(Node):
    """Base of an fd's object, and the node the transport shows for it:
    ``ctx`` (its context), ``uid`` (the caller that made it; only that uid
    may use it: EACCES), ``opens`` (open files of its node), ``closed``,
    ``on_close`` (set by the transport: called once when the fd closes, to
    drop the node), ``on_change`` (set by the transport: the fd's poll
    answer may have changed).

    Subclasses set ``node_kind`` and ``closed_errno`` (what using a closed
    fd answers), ``read``/``write`` (``(caller, bytes or count)``, or None
    for none), ``poll()``, and release what the fd holds in :meth:`_close`.
    """

    node_kind = None
    closed_errno = errno.EBADF
    mode = 0o600
    transport_ioctls = frozenset((NULL, SYNC_CLOSE))
    read = None
    write = None
    on_change = None

    @property
    def file_type(self):
        return type(self)

    def open(self, caller, flags):
        """open() of the node: a new FdOpen. EACCES another uid; ENOENT
        once the fd is closed."""
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"{self.node_kind} fd of uid {self.uid}")
        self.opened()
        return FdOpen(self)

    def poll(self, closed):
        """poll() of an open of the node (``closed``: that open was closed
        synchronously): the VFS's mask for a file without poll."""
        return File.poll(self)

    def changed(self):
        if self.on_change is not None:
            self.on_change()

    def __init__(self, ctx, uid):
        self.ctx = ctx
        self.uid = uid
        self.opens = 0
        self.closed = False
        self.on_close = None
        ctx.returned_fds.add(self)
        # Made by an ioctl that may still fail: then the fd never existed.
        ctx.on_rollback(self.close)

    def check_caller(self, caller):
        """``closed_errno`` once closed; EACCES for another uid."""
        if self.closed:
            raise UapiError(self.closed_errno, f"{self.node_kind} fd closed")
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"{self.node_kind} fd of uid {self.uid}")

    def opened(self):
        """One more open of the node: the first one holds the context.
        ENOENT once the fd is closed."""
        if self.closed:
            raise UapiError(errno.ENOENT, f"{self.node_kind} fd closed")
        self.opens += 1
        if self.opens == 1:
            self.ctx.bound += 1

    def released(self):
        """One open of the node closed; the last one closes the fd."""
        self.opens -= 1
        if self.opens == 0:
            self.close()
            self.ctx.unbound()

    def close(self):
        """Close the fd (idempotent): release what it holds, drop the node."""
        if self.closed:
            return
        self.closed = True
        self._close()
        self.ctx.returned_fds.discard(self)
        if self.on_close is not None:
            self.on_close()

    def _close(self):
        """What closing the fd releases (a subclass's)."""
