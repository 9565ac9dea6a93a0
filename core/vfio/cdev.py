"""The VFIO device cdev (/dev/vfio/devices/vfioN), reference §11.

Each open of a node is a :class:`VfioFile`. Dispatch order (§11.3): BIND is
handled first; before a successful BIND every other ioctl is EINVAL; then
ATTACH/DETACH; then VFIO_DEVICE_FEATURE; then the device driver (an emulated
vfio-pci: GET_INFO, ENOTTY for what it does not know).

VFIO ioctls do not go through the iommufd dispatcher: each reads its
``argsz``-prefixed struct itself with the rules of its own section.
"""
import errno

from .. import uapi
from ..errors import UapiError
from ..files import FRAME_OFFSET, IOCTL_FRAMES, TRANSPORT_IOCTLS, File
from ..iommufd.device import RID, BoundDevice
from ..iommufd.ucmd import copy_from_user, read_struct
from ..uapi import ffi
from . import pci
from .pci import follow_unmask_eventfd


class VfioFile(File):
    """One open VFIO device file: ``device`` (a core.devices.LiveDevice),
    ``pci`` (its PCI function, core.pci.PciDevice, powered while any open
    of the node lives), ``idev`` (the BoundDevice after BIND), ``uid`` of
    the opener. ioctl() is :func:`vfio_ioctl`; read/write at an offset are
    region accesses (vfio-device.md §4: ``index << 40``), except at
    core.files.FRAME_OFFSET, where ioctl frames are written and read;
    release() is :meth:`close`."""

    frames = IOCTL_FRAMES
    frame_offset = FRAME_OFFSET
    seekable = True
    transport_ioctls = TRANSPORT_IOCTLS
    #: A device fd from VFIO_GROUP_GET_DEVICE_FD (core.vfio.group), not the cdev.
    group_obtained = False

    def __init__(self, emulator, device, uid):
        self.emulator = emulator
        self.device = device
        self.uid = uid
        self.idev = None
        self.pci = device.open_function(emulator)
        self.open = True

    def ioctl(self, caller, cmd, arg):
        return vfio_ioctl(self, caller, cmd, arg)

    def check_caller(self, caller):
        """EBADF after a synchronous close; EACCES for another uid than
        the opener's (every op of the file, ioctl, read and write)."""
        if not self.open:
            raise UapiError(errno.EBADF, "device file closed")
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"device file of uid {self.uid}")

    def _check_access(self, caller):
        # vfio_device_fops read/write: before BIND access is not granted.
        self.check_caller(caller)
        if self.idev is None:
            raise UapiError(errno.EINVAL, "not bound")

    def read(self, caller, size, off):
        self._check_access(caller)
        return pci.region_read(self, size, off)

    def write(self, caller, data, off):
        self._check_access(caller)
        return pci.region_write(self, data, off)

    def release(self):
        self.close()

    def close(self):
        """close() of the device fd: detach the RID and every PASID, destroy
        the DEVICE object, release the context (§11.3); the last open of the
        node also powers the PCI function down (interrupts torn down, Bus
        Master cleared, the model reset: vfio-device.md §6.4). Idempotent."""
        if self.open:
            self.open = False
            self.device.close_function()
            # Powered down, it has no unmask eventfd left to watch.
            follow_unmask_eventfd(self.device, self.emulator)
        idev, self.idev = self.idev, None
        if idev is None:
            return
        ctx = idev.ctx
        if ctx.find(idev.id) is idev:
            ctx.remove(idev)
        ctx.unbound()


def _u32(arg, off):
    return int.from_bytes(arg.read(off, 4), "little")


def bind(vfile, caller, arg):
    """VFIO_DEVICE_BIND_IOMMUFD, in the order of §11.3.

    EFAULT unreadable; EINVAL argsz < 16, iommufd < 0, unknown flags or the
    TOKEN flag (the emulated driver has no VF token), already bound; E2BIG
    non-zero bytes past the 24-byte struct; EBADF/EBADFD the fd is not an
    open iommufs /dev/iommu; EACCES the context belongs to another uid;
    EBUSY the device, or a device of its group, is bound to a context
    already (DMA ownership is per group, §8);
    EFAULT unwritable out_devid (bind undone).
    """
    argsz = _u32(arg, 0)
    if argsz < 16:
        raise UapiError(errno.EINVAL, f"argsz {argsz}")
    sz = ffi.sizeof("struct vfio_device_bind_iommufd")
    cmd = read_struct(arg, "struct vfio_device_bind_iommufd *", sz, argsz)
    if cmd.iommufd < 0 or cmd.flags & ~uapi.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise UapiError(errno.EINVAL, "iommufd < 0 or unknown flags")
    if vfile.group_obtained:
        raise UapiError(errno.EINVAL, "a device fd from a VFIO group is bound already")
    if vfile.device.group in vfile.emulator.open_groups:
        # The legacy group node and the cdev exclude each other (§11.3).
        raise UapiError(errno.EBUSY, f"/dev/vfio/{vfile.device.group} is open")
    if vfile.idev is not None:
        raise UapiError(errno.EINVAL, "already bound")
    if cmd.flags & uapi.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise UapiError(errno.EINVAL, "no VF token support")
    ctx = caller.iommufd(cmd.iommufd)
    ctx.check_caller(caller)
    dev = vfile.device
    if dev.bound is not None:
        raise UapiError(errno.EBUSY, f"{dev.name} is bound to another context")
    for peer in vfile.emulator.groups[dev.group]:
        # DMA ownership is per group (§8): one context owns all its devices.
        if peer.bound is not None and peer.bound.ctx is not ctx:
            raise UapiError(errno.EBUSY, f"group peer {peer.name} is bound to another context")
    idev = BoundDevice(ctx, dev)
    ctx.add_published(idev)
    dev.bound = idev
    ctx.bound += 1
    vfile.idev = idev
    try:
        arg.write(12, idev.id.to_bytes(4, "little"))
    except UapiError:
        vfile.close()
        raise
    return 0


def _route(vfile, arg, struct, minsz, pasid_flag):
    """Read an ATTACH/DETACH argument: its struct and the route it names.

    The PASID field follows the fixed part (offset ``minsz``) and is read
    only with ``pasid_flag``. EFAULT unreadable; EINVAL argsz < minsz
    (minsz + 4 with the flag) or unknown flags; EOPNOTSUPP the flag on a
    device without PASID (§11.3).
    """
    cmd = copy_from_user(arg, struct, minsz)
    if cmd.argsz < minsz or cmd.flags & ~pasid_flag:
        raise UapiError(errno.EINVAL, "argsz or flags")
    if not cmd.flags & pasid_flag:
        return cmd, RID
    if vfile.device.pasid_bits == 0:
        raise UapiError(errno.EOPNOTSUPP, "device has no PASID")
    if cmd.argsz < minsz + 4:
        raise UapiError(errno.EINVAL, f"argsz < {minsz + 4} with PASID")
    return cmd, _u32(arg, minsz)


def attach(vfile, caller, arg):
    """VFIO_DEVICE_ATTACH_IOMMUFD_PT (§11.3, §8): a second attach replaces.

    Argument errors as :func:`_route`; EINVAL a PASID beyond the device's
    width; then the errors of BoundDevice.attach. Writes back pt_id only; if
    that write faults the RID attachment is detached and EFAULT returned.
    """
    cmd, pasid = _route(vfile, arg, "vfio_device_attach_iommufd_pt", 12, uapi.VFIO_DEVICE_ATTACH_PASID)
    if pasid is not RID and pasid >= 1 << vfile.device.pasid_bits:
        raise UapiError(errno.EINVAL, f"PASID {pasid} beyond {vfile.device.pasid_bits} bits")
    hwpt_id = vfile.idev.attach(cmd.pt_id, pasid)
    try:
        arg.write(8, hwpt_id.to_bytes(4, "little"))
    except UapiError:
        vfile.idev.detach(RID)
        raise
    return 0


def detach(vfile, caller, arg):
    """VFIO_DEVICE_DETACH_IOMMUFD_PT (§11.3): always 0 after the argument
    checks of :func:`_route`, attached or not."""
    _cmd, pasid = _route(vfile, arg, "vfio_device_detach_iommufd_pt", 8, uapi.VFIO_DEVICE_DETACH_PASID)
    vfile.idev.detach(pasid)
    return 0


FEATURE_GET, FEATURE_SET, FEATURE_PROBE = 1 << 16, 1 << 17, 1 << 18


def feature(vfile, caller, arg):
    """VFIO_DEVICE_FEATURE core checks (§11.2): EINVAL argsz < 8, unknown
    flag bits, GET and SET without PROBE; ENOTTY for every feature (the
    emulated driver implements none yet)."""
    argsz, flags = _u32(arg, 0), _u32(arg, 4)
    if argsz < 8:
        raise UapiError(errno.EINVAL, f"argsz {argsz}")
    if flags & ~(0xFFFF | FEATURE_GET | FEATURE_SET | FEATURE_PROBE):
        raise UapiError(errno.EINVAL, f"flags {flags:#x}")
    if flags & FEATURE_GET and flags & FEATURE_SET and not flags & FEATURE_PROBE:
        raise UapiError(errno.EINVAL, "GET|SET without PROBE")
    raise UapiError(errno.ENOTTY, f"feature {flags & 0xFFFF}")


def vfio_ioctl(vfile, caller, cmd, arg):
    """ioctl(devfd, cmd, arg) on a VFIO cdev file: result or UapiError.

    EBADF after the file was closed synchronously; EACCES for another uid
    than the opener; EINVAL for anything but BIND before BIND (§11.3).
    """
    vfile.check_caller(caller)
    if cmd == uapi.VFIO_DEVICE_BIND_IOMMUFD:
        return bind(vfile, caller, arg)
    if vfile.idev is None:
        raise UapiError(errno.EINVAL, "not bound")
    # On a group-obtained fd these two are not the core's: vfio-pci's ENOTTY.
    if cmd == uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT and not vfile.group_obtained:
        return attach(vfile, caller, arg)
    if cmd == uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT and not vfile.group_obtained:
        return detach(vfile, caller, arg)
    if cmd == uapi.VFIO_DEVICE_FEATURE:
        return feature(vfile, caller, arg)
    handler = pci.DRIVER.get(cmd)
    if handler is None:
        raise UapiError(errno.ENOTTY, f"vfio-pci has no ioctl {cmd:#x}")
    return handler(vfile, caller, arg)
