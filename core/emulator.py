"""The facade the transport drives: one :class:`Emulator` per mount.

The transport (devfs) calls these methods with the core lock held, one thread
at a time. Every method either returns its result or raises
:class:`core.errors.UapiError`; nothing here does FUSE or trio I/O.
"""
import errno

from .errors import UapiError


class Emulator:
    """All emulated state of one mount: topology devices, contexts, VFIO files.

    ``topology``: a :class:`core.topology.Topology` (the built-in one when None).
    """

    def __init__(self, topology=None):
        from .topology import Topology

        self.topology = topology or Topology.builtin()
        self.devices = {d.name: d for d in self.topology.devices}

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
        from .context import Context

        return Context(self, caller.uid)

    def iommufd_ioctl(self, ctx, caller, cmd, arg):
        """ioctl(iommufd, cmd, arg): the result (>= 0) or UapiError.

        ``arg`` is a core.usermem.MemArg (real ioctl()) or FrameArg (frames).
        A context is usable only by the uid that opened it (EACCES), and not
        after a synchronous close (EBADF).
        """
        from .dispatch import iommufd_ioctl

        return iommufd_ioctl(ctx, caller, cmd, arg)

    def close_iommufd(self, ctx):
        """close() of /dev/iommu: destroy every object of ctx leaf-first.

        Idempotent: the synchronous close and the later FUSE release may both
        call it.
        """
        ctx.close()

    # -- /dev/vfio/devices/vfioN ----------------------------------------------
    def open_vfio(self, device, caller):
        """open() of a VFIO cdev node: an unbound VfioFile."""
        from .vfio import VfioFile

        return VfioFile(self, device, caller.uid)

    def vfio_ioctl(self, vfile, caller, cmd, arg):
        """ioctl(devfd, cmd, arg) on a VFIO cdev: result or UapiError (§11.3)."""
        from .vfio import vfio_ioctl

        return vfio_ioctl(vfile, caller, cmd, arg)

    def close_vfio(self, vfile):
        """close() of the device fd: detach everything and unbind. Idempotent."""
        vfile.close()

    # -- devices/<name>/dma ----------------------------------------------------
    def dma(self, device, caller, request):
        """One IODM request frame (bytes) -> its reply frame (bytes).

        Frame errors and translation faults are statuses inside the reply
        (DESIGN.md, the emulated device); this never raises.
        """
        from .dma import dma_frame

        return dma_frame(self, device, caller, request)

    def shutdown(self):
        """Unmount: close every context still open (releases pidfds)."""
        from .context import Context

        for ctx in list(Context.live(self)):
            ctx.close()


def not_implemented(cmd):
    raise UapiError(errno.ENOTTY, f"cmd {cmd:#x}")
