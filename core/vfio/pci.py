"""The emulated vfio-pci driver behind a VFIO cdev: the device ioctls and
region access of reference vfio-device.md §3 and §4, over the PCI function
of core/pci (a PciDevice per topology device, made on the node's first
open: core.devices.LiveDevice.open_function).

Each handler copies its ``argsz``-prefixed struct as the kernel does
("copy N" of §3: EFAULT first), then applies its rules in the kernel's
order. The ioctls reach here only after the cdev's own dispatch
(core.vfio.cdev: BIND first, EINVAL before BIND).
"""
import errno
import struct

from .. import uapi
from ..errors import UapiError
from ..files import Eventfd, NeedFds
from ..iommufd.ucmd import copy_from_user
from ..topology import parse_bdf
from ..uapi import ffi

# vfio-pci's region and irq counts (§1.2, §1.3).
VFIO_PCI_NUM_REGIONS = 9
VFIO_PCI_NUM_IRQS = 5


def _u32(arg, off):
    return int.from_bytes(arg.read(off, 4), "little")


def get_info(vfile, caller, arg):
    """VFIO_DEVICE_GET_INFO (§3.1): copy 16 (EFAULT); EINVAL argsz < 16;
    writes back ``min(argsz, 24)`` bytes: flags PCI|RESET, 9 regions, 5
    irqs, no capabilities (cap_offset 0)."""
    argsz = int.from_bytes(arg.read(0, 16)[:4], "little")
    if argsz < 16:
        raise UapiError(errno.EINVAL, f"argsz {argsz}")
    info = vfile.pci.device_info()
    out = struct.pack("<IIIIII", argsz, info.flags, info.num_regions, info.num_irqs, 0, 0)
    arg.write(0, out[:min(argsz, 24)])
    return 0


def get_region_info(vfile, caller, arg):
    """VFIO_DEVICE_GET_REGION_INFO (§3.2): copy 32 (EFAULT); EINVAL argsz <
    32; EINVAL index 8 (not a VGA device) or >= 9 (no device-specific
    regions); an absent BAR or the upper half of a 64-bit BAR is flags 0,
    size 0, and success. No capability chain (no BAR is mmappable yet, so
    no MSIX_MAPPABLE): argsz is left as given, cap_offset 0."""
    cmd = copy_from_user(arg, "vfio_region_info", 32)
    if cmd.argsz < 32:
        raise UapiError(errno.EINVAL, f"argsz {cmd.argsz}")
    info = vfile.pci.region_info(cmd.index)
    cmd.flags = info.flags
    cmd.cap_offset = 0
    cmd.size = info.size
    cmd.offset = info.offset
    arg.write(0, ffi.buffer(cmd, 32)[:])
    return 0


def get_irq_info(vfile, caller, arg):
    """VFIO_DEVICE_GET_IRQ_INFO (§3.3): copy 16 (EFAULT); EINVAL argsz < 16,
    index >= 5, or ERR on a conventional PCI function; flags and count as
    §3.3 and §1.3 (a count of 0 is still success)."""
    cmd = copy_from_user(arg, "vfio_irq_info", 16)
    if cmd.argsz < 16 or cmd.index >= VFIO_PCI_NUM_IRQS:
        raise UapiError(errno.EINVAL, f"argsz {cmd.argsz} or index {cmd.index}")
    cmd.flags, cmd.count = vfile.pci.irq_info(cmd.index)
    arg.write(0, ffi.buffer(cmd, 16)[:])
    return 0


def set_irqs(vfile, caller, arg):
    """VFIO_DEVICE_SET_IRQS (§3.4, §6): copy 20 (EFAULT); the header checks
    (EINVAL); copy the data (EFAULT); the caller's eventfds taken (EBADF
    not an open fd, EINVAL not an eventfd, as the handler meets them); then
    the index/action handler (ENOTTY none; its own EINVAL). The eventfds
    are the caller's own: the transport takes them with pidfd_getfd, and
    the device signals them when the model raises the interrupt."""
    hdr = copy_from_user(arg, "vfio_irq_set", 20)
    pci = vfile.pci
    argsz, flags, index, start, count = hdr.argsz, hdr.flags, hdr.index, hdr.start, hdr.count
    nbytes = pci.irqs.validate(argsz, flags, index, start, count)
    data = arg.read(20, nbytes) if nbytes else b""
    fds = pci.set_irqs_fds(flags, index, start, count, data, argsz=argsz)
    missing = [fd for fd in fds if fd not in caller.fds]
    if missing and caller.resolve:
        raise NeedFds([(fd, Eventfd) for fd in missing])
    sinks = {}
    for fd in fds:
        got = caller.fds.get(fd, errno.EBADF)
        sinks[fd] = UapiError(got, f"fd {fd}") if isinstance(got, int) else got
    try:
        return pci.set_irqs(flags, index, start, count, data, sinks=sinks, argsz=argsz)
    finally:
        follow_unmask_eventfd(vfile.device, vfile.emulator)


def follow_unmask_eventfd(device, emulator):
    """Watch the INTx unmask eventfd of ``device``'s function (UNMASK|
    DATA_EVENTFD, §6.1: KVM's resample fd), if it has one: each signal on
    it unmasks INTx, as the kernel's virqfd does. Called after every
    SET_IRQS and after each close of the node (powered down, it has none)."""
    pci = device.pci
    sink = pci.irqs.intx_unmask if pci is not None else None
    old = device.watched_unmask
    if old is not None and old[0] is sink:
        return
    if old is not None:
        emulator.unwatch(old[1])
    device.watched_unmask = None
    fd = sink.fileno() if sink is not None and hasattr(sink, "fileno") else -1
    if fd < 0:
        return

    def signalled():
        if device.pci is not pci or pci.irqs.intx_unmask is not sink:
            return
        sink.drain()
        pci.intx_resample()
        emulator.watch(fd, signalled)      # a watch fires once: arm it again

    device.watched_unmask = (sink, fd)
    emulator.watch(fd, signalled)


def reset(vfile, caller, arg):
    """VFIO_DEVICE_RESET (§3.5): the argument is not read; the function and
    its model return to power-on state (vfio's virtual BARs and the
    SET_IRQS bindings stay, as on the kernel)."""
    vfile.pci.reset()
    return 0


def _reset_scope(vfile):
    """The devices a hot reset of ``vfile``'s device reaches: the functions
    of its bus segment behind the same PCIe-to-PCI bridge (a bus reset of
    the bridge's secondary bus), else the function alone on its slot. An
    mdev has no slot or bus to reset: empty."""
    dev = vfile.device
    if dev.is_mdev:
        return []
    if dev.alias is not None:
        return [d for d in vfile.emulator.devices.values()
                if d.alias == dev.alias and not d.is_mdev]
    return [dev]


def _devid(vfile, peer):
    """The devid of a dependent device (§3.6 step 5): its DEVICE id when
    bound to the caller's context; OWNED (0) when unbound but its group is
    owned by that context; NOT_OWNED otherwise."""
    ctx = vfile.idev.ctx
    if peer.bound is not None:
        return peer.bound.id if peer.bound.ctx is ctx else uapi.VFIO_PCI_DEVID_NOT_OWNED
    group = vfile.emulator.groups.get(peer.group, ())
    if any(m.bound is not None and m.bound.ctx is ctx for m in group):
        return uapi.VFIO_PCI_DEVID_OWNED
    return uapi.VFIO_PCI_DEVID_NOT_OWNED


def hot_reset_info(vfile, caller, arg):
    """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, cdev form (§3.6): copy 12
    (EFAULT); EINVAL argsz < 12; ENODEV no slot or bus reset (an mdev);
    ENOSPC with ``count`` written back when the array does not fit; else
    the dependent devices with devids and flags DEV_ID (| DEV_ID_OWNED when
    every one is owned by the caller's context)."""
    cmd = copy_from_user(arg, "vfio_pci_hot_reset_info", 12)
    if cmd.argsz < 12:
        raise UapiError(errno.EINVAL, f"argsz {cmd.argsz}")
    scope = _reset_scope(vfile)
    if not scope:
        raise UapiError(errno.ENODEV, "no slot or bus reset")
    cmd.flags = 0
    cmd.count = len(scope)
    if len(scope) > (cmd.argsz - 12) // 8:
        arg.write(0, ffi.buffer(cmd, 12)[:])
        raise UapiError(errno.ENOSPC, f"{len(scope)} devices")
    flags = uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
    entries = b""
    for peer in scope:
        devid = _devid(vfile, peer)
        if devid == uapi.VFIO_PCI_DEVID_NOT_OWNED:
            flags &= ~uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        rid = parse_bdf(peer.name)      # its own BDF, not the alias its DMA carries
        entries += struct.pack("<IHBB", devid, 0, rid >> 8, rid & 0xFF)
    arg.write(12, entries)
    cmd.flags = flags
    arg.write(0, ffi.buffer(cmd, 12)[:])
    return 0


def hot_reset(vfile, caller, arg):
    """VFIO_DEVICE_PCI_HOT_RESET, cdev form (§3.7): copy 12 (EFAULT);
    EINVAL argsz < 12, flags != 0, or count != 0 (a cdev proves ownership
    through its iommufd, not group fds); ENODEV no slot or bus reset;
    EINVAL a device the reset reaches is not owned by the caller's context;
    then every open function in scope resets."""
    cmd = copy_from_user(arg, "vfio_pci_hot_reset", 12)
    if cmd.argsz < 12 or cmd.flags:
        raise UapiError(errno.EINVAL, "argsz or flags")
    if cmd.count != 0:
        raise UapiError(errno.EINVAL, "a cdev hot reset takes no group fds")
    scope = _reset_scope(vfile)
    if not scope:
        raise UapiError(errno.ENODEV, "no slot or bus reset")
    if any(_devid(vfile, peer) == uapi.VFIO_PCI_DEVID_NOT_OWNED for peer in scope):
        raise UapiError(errno.EINVAL, "a device in the reset scope is not owned")
    for peer in scope:
        if peer.pci is not None:
            peer.pci.reset()
    return 0


#: vfio-pci's ioctls past the cdev core (§3).
DRIVER = {
    uapi.VFIO_DEVICE_GET_INFO: get_info,
    uapi.VFIO_DEVICE_GET_REGION_INFO: get_region_info,
    uapi.VFIO_DEVICE_GET_IRQ_INFO: get_irq_info,
    uapi.VFIO_DEVICE_SET_IRQS: set_irqs,
    uapi.VFIO_DEVICE_RESET: reset,
    uapi.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: hot_reset_info,
    uapi.VFIO_DEVICE_PCI_HOT_RESET: hot_reset,
}


def region_read(vfile, size, offset):
    """pread on the node (§4): ``size`` bytes at file offset ``offset``
    (``index << 40 | pos``) -> bytes (short at a BAR's end). 0 bytes -> b"";
    EINVAL no such region or past a BAR; EFAULT outside config space; EIO
    memory decode off."""
    if size == 0:
        return b""
    return vfile.pci.pread(offset, size)


def region_write(vfile, data, offset):
    """pwrite on the node (§4): ``data`` at file offset ``offset`` ->
    bytes written; errors as :func:`region_read`, and EINVAL for the ROM.
    A BAR write reaches the model before this returns (a doorbell's DMA
    and interrupts included)."""
    if not data:
        return 0
    return vfile.pci.pwrite(offset, data)
