"""The legacy VFIO group/container API (reference vfio-device.md §10).

Older programs (DPDK 22.11, the kernel's VFIO selftests in their type1
modes, QEMU's legacy backend) open a device through its IOMMU group:
``/dev/vfio/vfio`` is the container, ``/dev/vfio/N`` the group, and
VFIO_GROUP_GET_DEVICE_FD hands out a device fd already bound. iommufs
emulates a kernel built with CONFIG_IOMMUFD_VFIO_CONTAINER, where the
container is an iommufd (an open of ``vfio/vfio`` is a Context, and the
type1 ioctls are core.vfio.compat's), so a group joins either a container
or a /dev/iommu fd the same way: SET_CONTAINER takes the context's DMA
ownership of the group and makes its compat IOAS if it has none
(iommufd_vfio_compat_ioas_create), and each device fd binds its device to
that context and attaches it to the compat IOAS.

A device fd is a returned fd (core.fds): the server cannot create it in the
caller, so the ioctl's result is :data:`NO_FD` and the fd's node goes to
``caller.returned`` (``fds/vfio-dev-N``); the preload shim opens it and
returns that fd as the ioctl's result (docs/nodes.md, "Ioctls that return
file descriptors"). Each open of the node is a :class:`GroupDeviceFile`: a
VFIO device file that is bound from the start (BIND on it is EINVAL, ATTACH
and DETACH reach the driver: ENOTTY).
"""
import errno

from .. import uapi
from ..errors import UapiError
from ..fds import ReturnedFd
from ..files import IOCTL_FRAMES, TRANSPORT_IOCTLS, File
from ..iommufd.context import Context
from ..iommufd.device import RID, BoundDevice
from ..iommufd.ioas import Ioas
from ..uapi import ffi
from .cdev import VfioFile
from .pci import follow_unmask_eventfd

VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_GROUP_FLAGS_CONTAINER_SET = 2
#: What GET_DEVICE_FD returns on the wire: no fd of the caller's (the shim
#: replaces it by the fd it opens; a plain caller asks IOMMUFS_FD_PATH).
NO_FD = 0x7FFFFFFF
_PAGE = 4096


def _u32(arg, off):
    return int.from_bytes(arg.read(off, 4), "little")


class GroupFile(File):
    """An open of ``vfio/N``: the group ``number`` of the topology (its
    devices share a RID: reference §10; the sysfs ``iommu_group`` link's
    basename). ``ctx``: the Context its container (or iommufd) is, once
    SET_CONTAINER; ``devfds``: the device fds it handed out that are open."""

    frames = IOCTL_FRAMES
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, emulator, number, uid):
        self.emulator = emulator
        self.number = number
        self.uid = uid
        self.ctx = None
        self.devfds = []
        self.open = True

    @property
    def devices(self):
        return self.emulator.groups[self.number]

    def ioctl(self, caller, cmd, arg):
        """The group's ioctls (§10); ENOTTY for any other number; EACCES
        another uid; EBADF after a synchronous close."""
        if not self.open:
            raise UapiError(errno.EBADF, "group file closed")
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"group file of uid {self.uid}")
        handler = {uapi.VFIO_GROUP_GET_STATUS: self.get_status,
                   uapi.VFIO_GROUP_SET_CONTAINER: self.set_container,
                   uapi.VFIO_GROUP_UNSET_CONTAINER: self.unset_container,
                   uapi.VFIO_GROUP_GET_DEVICE_FD: self.get_device_fd}.get(cmd)
        if handler is None:
            raise UapiError(errno.ENOTTY, f"no group ioctl {cmd:#x}")
        return handler(caller, arg)

    def get_status(self, caller, arg):
        """GROUP_GET_STATUS: copy 8 (EFAULT); EINVAL argsz < 8; flags VIABLE
        (every device is vfio's) | CONTAINER_SET."""
        raw = arg.read(0, 8)
        argsz = int.from_bytes(raw[:4], "little")
        if argsz < 8:
            raise UapiError(errno.EINVAL, f"argsz {argsz}")
        flags = VFIO_GROUP_FLAGS_VIABLE | (VFIO_GROUP_FLAGS_CONTAINER_SET if self.ctx else 0)
        arg.write(4, flags.to_bytes(4, "little"))
        return 0

    def set_container(self, caller, arg):
        """GROUP_SET_CONTAINER: the s32 at ``arg`` (EFAULT) is a container or
        iommufd fd; EINVAL fd < 0 or a container set already; EBADF not an
        open fd; EBADFD not a container or iommufd; EBUSY a device of the
        group is bound to another context. Makes the context's compat IOAS
        when it has none."""
        fd = int.from_bytes(arg.read(0, 4), "little", signed=True)
        if fd < 0:
            raise UapiError(errno.EINVAL, f"fd {fd}")
        if self.ctx is not None:
            raise UapiError(errno.EINVAL, "the group has a container")
        ctx = caller.fd(fd, Context)
        for dev in self.devices:
            if dev.bound is not None and dev.bound.ctx is not ctx:
                raise UapiError(errno.EBUSY, f"{dev.name} is bound to another context")
        if ctx.vfio_ioas is None:
            ioas = Ioas(ctx)
            ctx.add_published(ioas)
            ctx.vfio_ioas = ioas
        self.ctx = ctx
        ctx.bound += 1          # the group holds its container, as a file reference
        return 0

    def unset_container(self, caller, arg):
        """GROUP_UNSET_CONTAINER: EINVAL none set; EBUSY device fds open."""
        if self.ctx is None:
            raise UapiError(errno.EINVAL, "no container")
        if any(not d.closed for d in self.devfds):
            raise UapiError(errno.EBUSY, "device fds are open")
        self._drop_container()
        return 0

    def _drop_container(self):
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx.unbound()

    def get_device_fd(self, caller, arg):
        """GROUP_GET_DEVICE_FD: the device name is a C string at ``arg``
        (EFAULT unreadable, EINVAL no NUL within a page); EINVAL no
        container; ENODEV no such device in the group; EBUSY the device is
        bound through its cdev. Returns :data:`NO_FD` and the fd's node in
        ``caller.returned``."""
        name = _c_string(arg)
        if self.ctx is None:
            raise UapiError(errno.EINVAL, "no container")
        # The kernel matches dev_name(): the sysfs BDF programs read from
        # /sys/bus/pci/devices; the topology's own name is taken as well.
        dev = next((d for d in self.devices if name in (d.name, d.sysfs_name)), None)
        if dev is None:
            raise UapiError(errno.ENODEV, f"no device {name!r} in group {self.number}")
        live = next((d for d in self.devfds if not d.closed and d.device is dev), None)
        if live is None and dev.bound is not None:
            raise UapiError(errno.EBUSY, f"{dev.name} is bound through its cdev")
        devfd = DeviceFd(self, dev, caller.uid, share=live)
        # This is not an iommufd ioctl, whose dispatcher would commit: the
        # fd's rollback hook must not outlive the call (a later failing
        # iommufd ioctl would close it).
        self.ctx.commit()
        self.devfds = [d for d in self.devfds if not d.closed] + [devfd]
        caller.returned.append(devfd)
        return NO_FD

    def release(self):
        """close() of the group: it lets go of its container; device fds it
        handed out stay open (§10)."""
        if self.open:
            self.open = False
            self._drop_container()
            self.emulator.open_groups.discard(self.number)


def _c_string(arg):
    """The NUL-terminated string at ``arg``, as the kernel's
    strndup_user(arg, PAGE_SIZE): EFAULT when a byte before the NUL is
    unreadable, EINVAL when no NUL comes within a page."""
    buf = ffi.new("char[]", _PAGE)
    got = ffi.buffer(buf, arg.read_into(0, buf, _PAGE))[:]
    end = got.find(b"\0")
    if end >= 0:
        return got[:end].decode(errors="replace")
    if len(got) < _PAGE:
        raise UapiError(errno.EFAULT, "device name unreadable")
    raise UapiError(errno.EINVAL, "device name longer than a page")


class _Binding:
    """The DEVICE object a group's device fds share: bound on the first,
    unbound when the last one closes (the kernel's open_count)."""

    def __init__(self, ctx, device):
        self.idev = BoundDevice(ctx, device)
        self.idev.group_obtained = True
        ctx.add_published(self.idev)
        device.bound = self.idev
        self.users = 0
        try:
            if ctx.vfio_ioas is None:
                # The compat IOAS was cleared (IOMMU_VFIO_IOAS) or destroyed
                # since SET_CONTAINER: iommufd_vfio_compat_ioas_get_id's ENODEV.
                raise UapiError(errno.ENODEV, "the container has no compat IOAS")
            self.idev.attach(ctx.vfio_ioas.id, RID)
        except UapiError:
            self.unbind()
            raise

    def unbind(self):
        idev = self.idev
        ctx = idev.ctx
        if ctx.find(idev.id) is idev:
            ctx.remove(idev)


class DeviceFd(ReturnedFd):
    """A device fd from VFIO_GROUP_GET_DEVICE_FD (a returned fd: node
    ``fds/vfio-dev-N``). ``device`` (a LiveDevice) is bound to the group's
    context and attached to its compat IOAS while any such fd lives."""

    node_kind = "vfio-dev"
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, group, device, uid, share=None):
        # Bound first: a failed bind or attach leaves no fd behind.
        self.binding = share.binding if share is not None else _Binding(group.ctx, device)
        super().__init__(group.ctx, uid)
        self.group = group
        self.device = device
        self.binding.users += 1

    @property
    def file_type(self):
        return GroupDeviceFile

    @property
    def idev(self):
        return self.binding.idev

    def open(self, caller, flags):
        """open() of the node: a GroupDeviceFile; EBADF closed, EACCES
        another uid."""
        self.check_caller(caller)
        self.opened()
        return GroupDeviceFile(self, caller)

    def _close(self):
        self.binding.users -= 1
        if self.binding.users == 0:
            self.binding.unbind()


class GroupDeviceFile(VfioFile):
    """One open of a group-obtained device fd: a VFIO device file bound from
    the start (reference §11.3: BIND is EINVAL on it; ATTACH and DETACH are
    not the core's on such an fd and reach vfio-pci: ENOTTY)."""

    group_obtained = True

    def __init__(self, devfd, caller):
        super().__init__(devfd.group.emulator, devfd.device, caller.uid)
        self.devfd = devfd
        self.idev = devfd.idev

    def close(self):
        if self.open:
            self.open = False
            self.device.close_function()
            # Powered down, it has no unmask eventfd left to watch.
            follow_unmask_eventfd(self.device, self.emulator)
            self.idev = None
            self.devfd.released()

    def fget(self):
        return self.devfd
