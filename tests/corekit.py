"""Helpers for unit tests that drive core directly, with no mount.

Structs live in this process's memory (cffi) and are passed by address, so
core reads and writes them with process_vm_readv/writev exactly as it does a
client's through a mount.
"""
import os
import threading

from core import uapi
from core.caller import Caller
from core.emulator import Emulator
from core.errors import UapiError
from core.uapi import ffi
from core.mm.usermem import FrameArg, MemArg


def new(struct_name, **fields):
    """A cffi ``struct <name>`` with its size/argsz field set to sizeof."""
    c = ffi.new(f"struct {struct_name} *")
    setattr(c, ffi.typeof(c[0]).fields[0][0], ffi.sizeof(c[0]))
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def addr(cdata):
    return int(ffi.cast("uintptr_t", cdata))


def open_node(emu, path, caller):
    """Open the node at ``path`` (core's node table) as ``caller``: its File."""
    return emu.open(emu.node(path), caller)


def dma_request(emu, device, caller, request):
    """One IODM request (bytes) on ``device``'s dma node -> its reply."""
    return open_node(emu, f"devices/{device.name}/dma", caller).request(caller, request)


class Kit:
    """An Emulator with the built-in topology and one context, plus calls.

    ``ioctl(cmd, cdata)`` returns the result or raises UapiError;
    ``err(cmd, cdata)`` returns the errno of a call that must fail.
    """

    def __init__(self, topology=None):
        self.emu = Emulator(topology)
        self.caller = Caller(threading.get_native_id(), os.getuid(), os.getgid())
        self.files = []
        self.new_context()

    def open_iommufd(self):
        """A new open of /dev/iommu (core.iommufd.dispatch.IommufdFile: ``ctx``)."""
        return open_node(self.emu, "iommu", self.caller)

    def new_context(self):
        """Make a new open of /dev/iommu the kit's ``iommufd`` / ``ctx``."""
        self.iommufd = self.open_iommufd()
        self.ctx = self.iommufd.ctx

    def ioctl(self, cmd, cdata=None):
        return self.iommufd.ioctl(self.caller, cmd, MemArg(self.caller.mem, addr(cdata) if cdata is not None else 0))

    def ioctl_int(self, cmd, value):
        """ioctl(iommufd, cmd, value) for an integer argument (VFIO_CHECK_EXTENSION)."""
        return self.iommufd.ioctl(self.caller, cmd, MemArg(self.caller.mem, value))

    def frame(self, cmd, data):
        """The call as a request frame carrying ``data`` (bytes): returns
        ``(result or -errno, the reply's argument bytes)``."""
        arg = FrameArg(data)
        try:
            r = self.iommufd.ioctl(self.caller, cmd, arg)
        except UapiError as e:
            r = -e.errno
        return r, bytes(arg.buf)

    def err(self, cmd, cdata=None, fn=None):
        try:
            (fn or self.ioctl)(cmd, cdata)
        except UapiError as e:
            return e.errno
        raise AssertionError(f"ioctl {cmd:#x} succeeded")

    # -- VFIO ---------------------------------------------------------------
    def open_vfio(self, name):
        vf = open_node(self.emu, f"vfio/devices/{self.emu.devices[name].vfio}", self.caller)
        self.files.append(vf)
        return vf

    def vfio(self, vf, cmd, cdata, ctx=None):
        caller = Caller(self.caller.tid, self.caller.uid, self.caller.gid, fds={7: ctx or self.ctx})
        return vf.ioctl(caller, cmd, MemArg(caller.mem, addr(cdata)))

    def vfio_err(self, vf, cmd, cdata, ctx=None):
        try:
            self.vfio(vf, cmd, cdata, ctx)
        except UapiError as e:
            return e.errno
        raise AssertionError(f"vfio ioctl {cmd:#x} succeeded")

    def bind(self, name, ctx=None):
        vf = self.open_vfio(name)
        b = new("vfio_device_bind_iommufd", iommufd=7)
        self.vfio(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b, ctx)
        return vf, b.out_devid

    def attach(self, vf, pt_id, pasid=None):
        a = new("vfio_device_attach_iommufd_pt", pt_id=pt_id)
        if pasid is not None:
            a.flags, a.pasid = uapi.VFIO_DEVICE_ATTACH_PASID, pasid
        self.vfio(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        return a.pt_id

    # -- iommufd ------------------------------------------------------------
    def ioas(self):
        c = new("iommu_ioas_alloc")
        self.ioctl(uapi.IOMMU_IOAS_ALLOC, c)
        return c.out_ioas_id

    def map(self, ioas_id, va, length, iova=None, flags=uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE):
        if iova is not None:
            flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
        c = new("iommu_ioas_map", flags=flags, ioas_id=ioas_id, user_va=va, length=length, iova=iova or 0)
        self.ioctl(uapi.IOMMU_IOAS_MAP, c)
        return c.iova

    def hwpt(self, dev_id, pt_id, flags=0):
        c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=pt_id, flags=flags)
        self.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
        return c.out_hwpt_id

    def destroy_err(self, oid):
        return self.err(uapi.IOMMU_DESTROY, new("iommu_destroy", id=oid))

    def destroy(self, oid):
        self.ioctl(uapi.IOMMU_DESTROY, new("iommu_destroy", id=oid))

    def close(self):
        for vf in self.files:
            vf.release()
        self.iommufd.release()
