"""Eventfds a client names in VFIO_DEVICE_SET_IRQS, taken into the server.

The interrupts of an emulated device go out through the caller's own
eventfds (reference vfio-device.md §6): the transport takes each with
pidfd_getfd, checks that it is an eventfd, and hands core an
:class:`EventfdSink` whose ``signal()`` adds 1 to the counter, exactly as
the kernel's eventfd_signal does for a real vfio-pci interrupt.
"""
import errno
import os
import select

from core.files import Eventfd

_ONE = (1).to_bytes(8, "little")


class EventfdSink(Eventfd):
    """A server-side duplicate ``fd`` of a client's eventfd. ``signal()``
    writes 1 (8 bytes); ``close()`` closes the duplicate (idempotent; also
    when the last reference goes, so a sink core never kept is not leaked).
    ``signals`` counts what was delivered, for ``info``."""

    def __init__(self, fd):
        self.fd = fd
        self.signals = 0
        # The duplicate shares the caller's file description, O_NONBLOCK
        # included: on a blocking eventfd whose counter is at its maximum a
        # write would wait for the caller to read, holding the whole server.
        self._writable = select.poll()
        self._writable.register(fd, select.POLLOUT)

    def signal(self):
        if self.fd < 0:
            return
        # The kernel's eventfd_signal never waits: at the maximum it
        # saturates silently, and so does this. (A caller writing its own
        # eventfd between this check and the write can still make the write
        # wait; only a deliberate race gets there.)
        if not self._writable.poll(0):
            return
        try:
            os.write(self.fd, _ONE)
            self.signals += 1
        except BlockingIOError:
            pass

    def fileno(self):
        """The duplicate's number (-1 once closed): what core watches for an
        unmask eventfd (core.vfio.pci)."""
        return self.fd

    def drain(self):
        """Read (and so reset) the counter after the fd polled readable."""
        if self.fd >= 0:
            try:
                os.read(self.fd, 8)
            except (BlockingIOError, OSError):
                pass

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        self.close()


def take_eventfd(dup):
    """An EventfdSink for ``dup`` (an fd this process owns, taken from a
    client), or the kernel's errno of eventfd_ctx_fdget for a file that is
    not an eventfd (EINVAL; ``dup`` is closed then)."""
    try:
        is_eventfd = os.readlink(f"/proc/self/fd/{dup}") == "anon_inode:[eventfd]"
    except OSError:
        is_eventfd = False
    if not is_eventfd:
        os.close(dup)
        return errno.EINVAL
    return EventfdSink(dup)
