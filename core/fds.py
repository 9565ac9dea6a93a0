"""Objects behind the fds that ioctls return (README, "Ioctls that return
file descriptors"): the fault fd (core.fault), the access fd (core.selftest).

The server cannot make an fd in the caller; the transport shows each such
object as a node under ``fds/`` (its ``node_kind`` names the node's kind and
prefix) and the client opens it. The lifetime is the fd's: opening the node
is holding the fd, and the fd closes when the node's last open file does
(after at least one open) or, never opened, when its context is closed. An
open fd keeps its iommufd context alive, as the kernel's fds hold a
reference on the iommufd file.
"""
import errno

from .errors import UapiError


class ReturnedFd:
    """Base of an fd's object: ``ctx`` (its context), ``uid`` (the caller
    that made it; only that uid may use it: EACCES), ``opens`` (open files
    of its node), ``closed``, ``on_close`` (set by the transport: called
    once when the fd closes, to drop the node).

    Subclasses set ``node_kind`` and ``closed_errno`` (what using a closed
    fd answers) and release what the fd holds in :meth:`_close`.
    """

    node_kind = None
    closed_errno = errno.EBADF

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
