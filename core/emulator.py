"""The facade the transport drives: one :class:`Emulator` per mount.

The transport (devfs) calls these methods with the core lock held, one thread
at a time. Every method either returns its result or raises
:class:`core.errors.UapiError`; nothing here does FUSE or trio I/O.
"""
import errno

from .context import Context
from .dispatch import iommufd_ioctl as _iommufd_ioctl
from .dma import dma_frame
from .driver import DriverFile, driver_ioctl
from .errors import UapiError
from .pasid import PasidSpace
from .sva import SvaTable
from .topology import Topology
from .vfio import VfioFile, vfio_ioctl


class Watch:
    """An fd core waits on (``fd``) and what to do when it is readable (``fn``)."""

    __slots__ = ("fd", "fn")

    def __init__(self, fd, fn):
        self.fd = fd
        self.fn = fn


class Emulator:
    """All emulated state of one mount: topology devices, contexts, VFIO files.

    ``topology``: a :class:`core.topology.Topology` (the built-in one when None).
    """

    def __init__(self, topology=None):
        self.topology = topology or Topology.builtin()
        self.devices = {d.name: d for d in self.topology.devices}
        # The system-wide PASID space (ENQCMD devices, their SVA bonds; seed 003).
        self.global_pasids = PasidSpace(self.topology.iommu.pasid_bits, "global")
        self.sva = SvaTable(self)
        self.watches = {}        # fd -> Watch
        self.watch_gen = 0
        # IOMMU_TEST_CMD SET_TEMP_MEMORY_LIMIT (core.selftest): global, as in the kernel.
        self.test_memory_limit = 65536

    # -- fds core wants to hear about -------------------------------------------
    def watch(self, fd, fn):
        """Core asks the transport: call ``fn()`` (with the core lock held)
        once ``fd`` becomes readable (a pidfd: the process exited). Replaces
        an earlier watch of the same fd. The transport follows ``watches``
        whenever ``watch_gen`` changes."""
        self.watches[fd] = Watch(fd, fn)
        self.watch_gen += 1

    def unwatch(self, fd):
        """Forget the watch of ``fd`` (the fd is about to be closed)."""
        if self.watches.pop(fd, None) is not None:
            self.watch_gen += 1

    def fire_watch(self, w):
        """The transport saw the Watch ``w``'s fd readable: drop it and run
        its function (no-op if it was unwatched or replaced meanwhile)."""
        if self.watches.get(w.fd) is w:
            del self.watches[w.fd]
            self.watch_gen += 1
            w.fn()

    # -- nodes ---------------------------------------------------------------
    def vfio_nodes(self):
        """``{"vfio0": device, ...}``: one VFIO cdev node per topology device."""
        return {d.vfio: d for d in self.topology.devices}

    def device_info(self, device):
        """The ``devices/<name>/info`` JSON document, as UTF-8 bytes."""
        return device.info_json()

    # -- /dev/iommu ----------------------------------------------------------
    def open_iommufd(self, caller):
        """open() of /dev/iommu: a new, empty Context owned by caller.uid."""
        return Context(self, caller.uid)

    def iommufd_ioctl(self, ctx, caller, cmd, arg):
        """ioctl(iommufd, cmd, arg): the result (>= 0) or UapiError.

        ``arg`` is a core.usermem.MemArg (real ioctl()) or FrameArg (frames).
        A context is usable only by the uid that opened it (EACCES), and not
        after a synchronous close (EBADF).
        """
        return _iommufd_ioctl(ctx, caller, cmd, arg)

    def close_iommufd(self, ctx):
        """close() of /dev/iommu: destroy every object of ctx leaf-first.

        Idempotent: the synchronous close and the later FUSE release may both
        call it.
        """
        ctx.close()

    # -- /dev/vfio/devices/vfioN ----------------------------------------------
    def open_vfio(self, device, caller):
        """open() of a VFIO cdev node: an unbound VfioFile."""
        return VfioFile(self, device, caller.uid)

    def vfio_ioctl(self, vfile, caller, cmd, arg):
        """ioctl(devfd, cmd, arg) on a VFIO cdev: result or UapiError (§11.3)."""
        return vfio_ioctl(vfile, caller, cmd, arg)

    def close_vfio(self, vfile):
        """close() of the device fd: detach everything and unbind. Idempotent."""
        vfile.close()

    # -- devices/<name>/driver -------------------------------------------------
    def open_driver(self, device, caller):
        """open() of a device's driver node: a new core.driver.DriverFile."""
        return DriverFile(self, device, caller.uid)

    def driver_ioctl(self, dfile, caller, cmd, arg):
        """ioctl on a driver node (core.driver): result or UapiError."""
        return driver_ioctl(dfile, caller, cmd, arg)

    def driver_read(self, dfile, caller, count):
        """read() of ``count`` bytes of a driver node: its pending events
        (bytes). EACCES another uid; EINVAL ``count`` below one record."""
        dfile.check_caller(caller)
        return dfile.read_events(count)

    def close_driver(self, dfile):
        """close() of a driver node: unbind its bonds, free its PASIDs."""
        dfile.close()

    # -- fault fds (fds/fault-N) -----------------------------------------------
    def open_fault(self, ffile, caller):
        """open() of a fault fd's node (core.fault.FaultFile): ENOENT once
        the fd is closed; EACCES for another uid."""
        ffile.check_caller(caller)
        ffile.opened()

    def fault_read(self, ffile, caller, count):
        """read() of the fault fd (reference §10.1): bytes of whole groups."""
        ffile.check_caller(caller)
        return ffile.queue.read(count)

    def fault_write(self, ffile, caller, data):
        """write() of page responses (reference §10.1): bytes consumed."""
        ffile.check_caller(caller)
        return ffile.queue.write(data)

    def fault_readable(self, ffile):
        """poll(): True while fault groups wait to be read."""
        return not ffile.closed and ffile.queue.readable()

    def release_fault(self, ffile):
        """The last close of one open of the node."""
        ffile.released()

    # -- access fds (fds/access-N, IOMMU_TEST_CMD CREATE_ACCESS) ------------------
    def open_access(self, afile, caller):
        """open() of an access fd's node (core.selftest.AccessFile): ENOENT
        once the fd is closed; EACCES for another uid."""
        if caller.uid != afile.uid:
            raise UapiError(errno.EACCES, f"access fd of uid {afile.uid}")
        afile.opened()

    def release_access(self, afile):
        """The last close of one open of the node: the last one destroys the
        access (its pins released)."""
        afile.released()

    # -- devices/<name>/dma ----------------------------------------------------
    def dma(self, device, caller, request):
        """One IODM request frame (bytes) -> its reply frame (bytes).

        Frame errors and translation faults are statuses inside the reply
        (DESIGN.md, the emulated device); this never raises.
        """
        return dma_frame(self, device, caller, request)

    def shutdown(self):
        """Unmount: close every context still open (releases pidfds)."""
        for ctx in list(Context.live(self)):
            ctx.close()
        self.watches.clear()
        self.watch_gen += 1


def not_implemented(cmd):
    raise UapiError(errno.ENOTTY, f"cmd {cmd:#x}")
