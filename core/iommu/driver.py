"""The driver side of a device: ``devices/<name>/driver`` (docs/driver-side.md).

The RFC's kernel drivers (vfio-pci, an mdev parent, IDXD) do things no
iommufd ioctl does: allocate PASIDs from the device's or the global space
(seed 003) and bind process address spaces for SVA (seed 002). A test or
harness plays that driver through this node. Each open is one
:class:`DriverFile`: the PASIDs it allocated and the bonds it made are its
own, and closing it frees them, as unloading a driver would.

Commands are project-private ``_IO(0xF5, nr)`` ioctls (or frames carrying
them) with the generic rules of the iommufd table (core.iommufd.ucmd.decode):
EFAULT, ENOTTY, EINVAL below the minimum size, E2BIG for a non-zero tail;
``flags`` and ``__reserved`` must be 0 (EOPNOTSUPP).

read() returns the events of this open file's bonds, whole 32-byte
``struct iommufs_drv_event`` records (type, handle, pasid, pid, addr, perm):
IOMMUFS_EVENT_MM_EXIT (1) when a bound process exits, IOMMUFS_EVENT_IOPF (2)
when a PRI device's DMA with a bond's PASID faults (the emulated kernel
handler answers it at once: a page the process has not mapped cannot be
made present, so the DMA fails); 0 when there is none; EINVAL when one is
pending but ``count`` is smaller than a record. poll() reports POLLIN while
events wait.
"""
import errno
import struct
from collections import deque

from .. import uapi
from ..errors import UapiError
from ..files import IOCTL_FRAMES, POLLIN, POLLOUT, TRANSPORT_IOCTLS, File
from ..iommufd.ucmd import Table
from .pasid import space_of
from .sva import alloc_unrouted

DRIVER = Table()
EVENT = struct.Struct("<IIIiQII")


class DriverFile(File):
    """One open of a device's driver node: ``device``, ``uid`` (only this
    uid may use it: EACCES), ``pasids`` (allocated: PASID -> its space),
    ``bonds`` (handle -> SvaBond made here), ``events`` (pending records).
    Its ioctls are :data:`DRIVER`'s (project-private numbers of its own);
    read() gives events unless the reading thread has a frame in flight."""

    frames = IOCTL_FRAMES
    own_private = True
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, emulator, device, uid):
        self.emulator = emulator
        self.device = device
        self.uid = uid
        self.pasids = {}
        self.bonds = {}
        self.events = deque()
        self.open = True

    def check_caller(self, caller):
        if not self.open:
            raise UapiError(errno.EBADF, "driver file closed")
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"driver file of uid {self.uid}")

    def _event(self, typ, bond, addr=0, perm=0):
        self.events.append(EVENT.pack(typ, bond.handle, bond.pasid, bond.mm.tgid, addr, perm, 0))
        self.changed()

    def mm_exit(self, bond):
        """Queue the mm_exit event of ``bond`` (core.iommu.sva) and wake pollers."""
        self._event(uapi.IOMMUFS_EVENT_MM_EXIT, bond)

    def iopf(self, bond, addr, access):
        """Report an I/O page fault of ``bond`` at ``addr`` (access: 1 read,
        2 write, as IOMMU_PGFAULT_PERM_*)."""
        self._event(uapi.IOMMUFS_EVENT_IOPF, bond, addr, access)

    def read_events(self, count):
        """Whole event records that fit in ``count`` bytes (bytes; b"" when
        none wait). EINVAL if one waits but not even it fits."""
        if not self.events:
            return b""
        if count < EVENT.size:
            raise UapiError(errno.EINVAL, f"read of {count} bytes < one event")
        out = []
        while self.events and (len(out) + 1) * EVENT.size <= count:
            out.append(self.events.popleft())
        return b"".join(out)

    def ioctl(self, caller, cmd, arg):
        """ioctl on a driver node: result or UapiError (EBADF closed, EACCES
        another uid, then the generic rules and the command's own)."""
        self.check_caller(caller)
        return DRIVER.call(self, caller, cmd, arg)

    def read(self, caller, count, off):
        """read() of ``count`` bytes: pending events (bytes). EBADF closed,
        EACCES another uid; EINVAL ``count`` below one record."""
        self.check_caller(caller)
        return self.read_events(count)

    def poll(self):
        """POLLIN while events wait; always writable (frames)."""
        return POLLIN | POLLOUT if self.open and self.events else POLLOUT

    def release(self):
        self.close()

    def close(self):
        """Unbind every bond (all its users) and free every PASID. Idempotent."""
        self.open = False
        sva = self.emulator.sva
        for bond in list(self.bonds.values()):
            while bond.users:
                sva.unbind(bond)
        self.bonds.clear()
        for pasid, space in self.pasids.items():
            space.free(pasid)
        self.pasids.clear()
        self.events.clear()


def _no_flags(flags, reserved):
    if flags or reserved:
        raise UapiError(errno.EOPNOTSUPP, "flags / __reserved")


@DRIVER.register(uapi.IOMMUFS_PASID_ALLOC, "iommufs_pasid", "__reserved")
def pasid_alloc(dfile, caller, cmd):
    """IOMMUFS_PASID_ALLOC: ``pasid`` = the lowest free PASID of the
    device's space (the global space for an ENQCMD device, seed 003) that
    nothing is routed at on the device. EOPNOTSUPP flags/__reserved or a
    device without PASID; ENOSPC the space is exhausted."""
    _no_flags(cmd.flags, cmd.__reserved)
    space = space_of(dfile.emulator, dfile.device)
    pasid = alloc_unrouted(dfile.emulator, dfile.device, space)
    dfile.pasids[pasid] = space
    cmd.pasid = pasid


@DRIVER.register(uapi.IOMMUFS_PASID_FREE, "iommufs_pasid", "__reserved")
def pasid_free(dfile, caller, cmd):
    """IOMMUFS_PASID_FREE of ``pasid``: EOPNOTSUPP flags/__reserved; ENOENT
    not allocated through this open file. Attachments made with it stay
    (the PASID is routing data the user gave the IOMMU, seed 003)."""
    _no_flags(cmd.flags, cmd.__reserved)
    space = dfile.pasids.pop(cmd.pasid, None)
    if space is None:
        raise UapiError(errno.ENOENT, f"PASID {cmd.pasid} was not allocated here")
    space.free(cmd.pasid)


@DRIVER.register(uapi.IOMMUFS_SVA_BIND, "iommufs_sva_bind", "__reserved")
def sva_bind(dfile, caller, cmd):
    """IOMMUFS_SVA_BIND: bind process ``pid`` (0: the caller's) to the
    device; ``out_handle`` and ``out_pasid`` come back (the same handle for
    the same process and device: one more user). Errors of
    core.iommu.sva.SvaTable.bind (EOPNOTSUPP, ESRCH, EPERM, ENOSPC, EBUSY)."""
    _no_flags(cmd.flags, cmd.__reserved)
    if cmd.pid < 0:
        raise UapiError(errno.EINVAL, f"pid {cmd.pid}")
    bond = dfile.emulator.sva.bind(dfile, caller, cmd.pid)
    dfile.bonds[bond.handle] = bond
    cmd.out_handle = bond.handle
    cmd.out_pasid = bond.pasid


def _bond(dfile, handle):
    bond = dfile.bonds.get(handle)
    if bond is None:
        raise UapiError(errno.ENOENT, f"no SVA handle {handle} here")
    return bond


@DRIVER.register(uapi.IOMMUFS_SVA_UNBIND, "iommufs_sva", "__reserved")
def sva_unbind(dfile, caller, cmd):
    """IOMMUFS_SVA_UNBIND of ``handle`` (one user): ENOENT unknown here;
    EOPNOTSUPP __reserved. Succeeds after mm_exit too (seed 002);
    ``out_pasid`` is the PASID the bond had."""
    _no_flags(0, cmd.__reserved)
    bond = _bond(dfile, cmd.handle)
    cmd.out_pasid = bond.pasid
    dfile.emulator.sva.unbind(bond)
    if bond.users == 0:
        del dfile.bonds[bond.handle]


@DRIVER.register(uapi.IOMMUFS_SVA_GET_PASID, "iommufs_sva", "__reserved")
def sva_get_pasid(dfile, caller, cmd):
    """IOMMUFS_SVA_GET_PASID of ``handle``: ``out_pasid``. ENOENT unknown
    here; EOPNOTSUPP __reserved."""
    _no_flags(0, cmd.__reserved)
    cmd.out_pasid = _bond(dfile, cmd.handle).pasid
