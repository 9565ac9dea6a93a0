"""A small Python client for an iommufs mount.

It opens the nodes, builds the uAPI structs with cffi (core.uapi layouts),
calls real ioctl() on them (or, with ``frames=True``, the write/read frame
protocol of DESIGN.md), and raises ``OSError`` with the kernel's errno.

    from devfs.client import Iommufd, VfioDevice, DmaPort, Buffer
    iommufd = Iommufd("/mnt/iommufs")
    dev = VfioDevice("/mnt/iommufs", "0000:00:03.0")
    dev_id = dev.bind(iommufd)
    ioas = iommufd.ioas_alloc()
    hwpt = dev.attach(ioas)
    buf = Buffer(1 << 20)
    iommufd.ioas_map(ioas, buf.va, len(buf), iova=0x100000)
    DmaPort("/mnt/iommufs", "0000:00:03.0").write(0x100000, b"hello")
    assert buf[:5] == b"hello"

Pointers inside structs (``user_va``, ``allowed_iovas``, ``data_uptr``) are
addresses in this process: use :class:`Buffer` (page-aligned anonymous
memory) or any cffi allocation kept alive during the call.
"""
import json
import mmap
import os
import struct

import cffi

from core import uapi, wire
from core.uapi import ffi

_libc_ffi = cffi.FFI()
_libc_ffi.cdef("int ioctl(int fd, unsigned long request, void *arg);")
_libc = _libc_ffi.dlopen(None)

FRAME_HDR = wire.IOFS_REQUEST
REPLY_HDR = wire.IOFS_REPLY
DMA_REQ = wire.IODM_REQUEST
DMA_REPLY = wire.IODM_REPLY
MAX_REPLY = 1 << 20


def _raise(err, what):
    raise OSError(err, f"{what}: {os.strerror(err)}")


class Buffer:
    """``size`` bytes of page-aligned anonymous memory in this process.

    ``va`` is its virtual address (to pass as ``user_va``); it behaves as a
    writable bytes-like object (slicing, assignment, ``len``).
    """

    def __init__(self, size):
        self.map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._cbuf = ffi.from_buffer(self.map)
        self.va = int(ffi.cast("uintptr_t", self._cbuf))
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, k):
        return self.map[k]

    def __setitem__(self, k, v):
        self.map[k] = v

    def close(self):
        self._cbuf = None
        self.map.close()


class Node:
    """An open iommufs node speaking ioctl() or frames.

    ``ioctl(cmd, cdata)`` passes a pointer to the cffi struct and returns
    the ioctl result; with ``frames`` it sends the struct bytes in a request
    frame and copies the reply's argument back into ``cdata``. Failures
    raise OSError(errno).
    """

    #: Where frames go on this node (None: write()/read(); a VFIO node's
    #: offsets are regions, so its frames are at core.wire.VFIO_FRAME_OFFSET).
    frame_offset = None

    def __init__(self, path, frames=False, flags=os.O_RDWR):
        self.path = path
        self.fd = os.open(path, flags | os.O_CLOEXEC)
        self.frames = frames
        self.last_extra = b""

    def fileno(self):
        return self.fd

    def ioctl(self, cmd, cdata=None, size=None):
        """ioctl(fd, cmd, &cdata); ``size`` bytes of the struct travel in a frame."""
        if self.frames:
            return self.frame(cmd, cdata, size)
        ptr = ffi.NULL if cdata is None else cdata
        r = _libc.ioctl(self.fd, cmd, _libc_ffi.cast("void *", int(ffi.cast("uintptr_t", ptr))))
        if r < 0:
            _raise(_libc_ffi.errno, f"ioctl {cmd:#x}")
        return r

    def ioctl_int(self, cmd, value):
        """ioctl(fd, cmd, value) for commands whose argument is an integer
        (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU); in a frame, 8 bytes holding it."""
        if self.frames:
            return self.frame(cmd, ffi.new("uint64_t *", value), size=8)
        r = _libc.ioctl(self.fd, cmd, _libc_ffi.cast("void *", value))
        if r < 0:
            _raise(_libc_ffi.errno, f"ioctl {cmd:#x}")
        return r

    def frame(self, cmd, cdata=None, size=None):
        """One request frame and its reply (DESIGN.md, frames)."""
        if cdata is None:
            arg = b""
        else:
            n = ffi.sizeof(cdata[0]) if size is None else size
            arg = ffi.buffer(cdata, n)[:]
        req = FRAME_HDR.pack(wire.IOFS_MAGIC, cmd, len(arg), 0) + arg
        if self.frame_offset is None:
            os.write(self.fd, req)
            rep = os.read(self.fd, MAX_REPLY)
        else:
            os.pwrite(self.fd, req, self.frame_offset)
            rep = os.pread(self.fd, MAX_REPLY, self.frame_offset)
        magic, result, arg_len, extra_len = REPLY_HDR.unpack_from(rep)
        if magic != wire.IOFS_MAGIC:
            raise OSError(0, "bad reply magic")
        if cdata is not None and arg_len:
            ffi.memmove(cdata, rep[16:16 + arg_len], arg_len)
        self.last_extra = rep[16 + arg_len:16 + arg_len + extra_len]
        if result < 0:
            _raise(-result, f"frame {cmd:#x}")
        return result

    def sync_close(self):
        """Close with the server's teardown finished before returning."""
        try:
            self.ioctl(uapi.IOMMUFS_SYNC_CLOSE) if not self.frames else self.frame(0)
        finally:
            self.close()

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _new(struct_name, **fields):
    c = ffi.new(f"struct {struct_name} *")
    first = ffi.typeof(c[0]).fields[0][0]
    setattr(c, first, ffi.sizeof(c[0]))
    for k, v in fields.items():
        setattr(c, k, v)
    return c


class Iommufd(Node):
    """An open ``<mount>/iommu``: one iommufd context. A method per ioctl."""

    def __init__(self, mount, frames=False):
        super().__init__(os.path.join(mount, "iommu"), frames)
        self.mount = mount

    def destroy(self, obj_id):
        """IOMMU_DESTROY."""
        self.ioctl(uapi.IOMMU_DESTROY, _new("iommu_destroy", id=obj_id))

    def ioas_alloc(self, flags=0):
        """IOMMU_IOAS_ALLOC -> ioas_id."""
        c = _new("iommu_ioas_alloc", flags=flags)
        self.ioctl(uapi.IOMMU_IOAS_ALLOC, c)
        return c.out_ioas_id

    def iova_ranges(self, ioas_id, capacity=16):
        """IOMMU_IOAS_IOVA_RANGES -> ([(start, last), ...], out_iova_alignment).

        Retries with a larger array on EMSGSIZE, as a careful caller does.
        """
        while True:
            arr = ffi.new("struct iommu_iova_range[]", max(capacity, 1))
            c = _new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=capacity,
                     allowed_iovas=int(ffi.cast("uintptr_t", arr)))
            try:
                self.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, c)
            except OSError as e:
                if e.errno == 90 and c.num_iovas > capacity:  # EMSGSIZE
                    capacity = c.num_iovas
                    continue
                raise
            return [(arr[i].start, arr[i].last) for i in range(c.num_iovas)], c.out_iova_alignment

    def allow_iovas(self, ioas_id, ranges):
        """IOMMU_IOAS_ALLOW_IOVAS with inclusive (start, last) ranges."""
        arr = ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        for i, (s, l) in enumerate(ranges):
            arr[i].start, arr[i].last = s, l
        c = _new("iommu_ioas_allow_iovas", ioas_id=ioas_id, num_iovas=len(ranges),
                 allowed_iovas=int(ffi.cast("uintptr_t", arr)))
        self.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, c)

    def ioas_map(self, ioas_id, user_va, length, iova=None,
                 flags=uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE):
        """IOMMU_IOAS_MAP of ``length`` bytes at ``user_va``; fixed IOVA when
        ``iova`` is given. Returns the IOVA."""
        if iova is not None:
            flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
        c = _new("iommu_ioas_map", flags=flags, ioas_id=ioas_id, user_va=user_va,
                 length=length, iova=iova or 0)
        self.ioctl(uapi.IOMMU_IOAS_MAP, c)
        return c.iova

    def ioas_unmap(self, ioas_id, iova, length):
        """IOMMU_IOAS_UNMAP -> bytes unmapped."""
        c = _new("iommu_ioas_unmap", ioas_id=ioas_id, iova=iova, length=length)
        self.ioctl(uapi.IOMMU_IOAS_UNMAP, c)
        return c.length

    def ioas_copy(self, dst_ioas_id, src_ioas_id, src_iova, length, dst_iova=None,
                  flags=uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE):
        """IOMMU_IOAS_COPY -> dst IOVA."""
        if dst_iova is not None:
            flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
        c = _new("iommu_ioas_copy", flags=flags, dst_ioas_id=dst_ioas_id,
                 src_ioas_id=src_ioas_id, length=length, dst_iova=dst_iova or 0,
                 src_iova=src_iova)
        self.ioctl(uapi.IOMMU_IOAS_COPY, c)
        return c.dst_iova

    def option(self, option_id, op, object_id=0, val64=0):
        """IOMMU_OPTION -> val64 as written back."""
        c = _new("iommu_option", option_id=option_id, op=op, object_id=object_id, val64=val64)
        self.ioctl(uapi.IOMMU_OPTION, c)
        return c.val64

    def hwpt_alloc(self, dev_id, pt_id, flags=0, fault_id=0):
        """IOMMU_HWPT_ALLOC of a paging HWPT -> hwpt_id."""
        c = _new("iommu_hwpt_alloc", flags=flags, dev_id=dev_id, pt_id=pt_id, fault_id=fault_id)
        self.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
        return c.out_hwpt_id

    def returned_fd_path(self, index=0):
        """IOMMUFS_FD_PATH: the node path (relative to the mount root) of fd
        field ``index`` of this thread's last fd-returning ioctl."""
        c = _new("iommufs_fd_path", index=index)
        self.ioctl(uapi.IOMMUFS_FD_PATH, c)
        return ffi.string(c.path).decode()

    def _returned_paths(self):
        # Frames carry the paths in the reply's extra data; ioctl() callers ask.
        if self.frames:
            return [p.decode() for p in self.last_extra.split(b"\0")[:-1]]
        return [self.returned_fd_path(0)]

    def fault_queue_alloc(self, flags=0):
        """IOMMU_FAULT_QUEUE_ALLOC -> (fault_id, FaultFd): the fault fd is
        opened from the node the server made (README, "Ioctls that return
        file descriptors") and its number put in ``out_fault_fd``, as the
        kernel would have."""
        c = _new("iommu_fault_alloc", flags=flags)
        self.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, c)
        fq = FaultFd(os.path.join(self.mount, self._returned_paths()[0]))
        c.out_fault_fd = fq.fd
        return c.out_fault_id, fq

    def get_hw_info(self, dev_id, data_len=0):
        """IOMMU_GET_HW_INFO -> dict of the out fields (and ``data`` bytes)."""
        data = ffi.new("char[]", max(data_len, 1))
        c = _new("iommu_hw_info", dev_id=dev_id, data_len=data_len,
                 data_uptr=int(ffi.cast("uintptr_t", data)) if data_len else 0)
        self.ioctl(uapi.IOMMU_GET_HW_INFO, c)
        return {"data_len": c.data_len, "out_data_type": c.out_data_type,
                "out_max_pasid_log2": c.out_max_pasid_log2,
                "out_capabilities": c.out_capabilities,
                "data": ffi.buffer(data, min(data_len, c.data_len))[:]}


    # -- VFIO type1 compatibility (reference §11.4) -------------------------------
    def vfio_ioas(self, op, ioas_id=0):
        """IOMMU_VFIO_IOAS (GET=0, SET=1, CLEAR=2) -> ``ioas_id`` as written back
        (the compat IOAS for GET)."""
        c = _new("iommu_vfio_ioas", op=op, ioas_id=ioas_id)
        self.ioctl(uapi.IOMMU_VFIO_IOAS, c)
        return c.ioas_id

    def get_api_version(self):
        """VFIO_GET_API_VERSION -> 0."""
        return self.ioctl_int(uapi.VFIO_GET_API_VERSION, 0)

    def check_extension(self, extension):
        """VFIO_CHECK_EXTENSION -> 0 or 1."""
        return self.ioctl_int(uapi.VFIO_CHECK_EXTENSION, extension)

    def set_iommu(self, iommu_type=uapi.VFIO_TYPE1v2_IOMMU):
        """VFIO_SET_IOMMU (VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU)."""
        self.ioctl_int(uapi.VFIO_SET_IOMMU, iommu_type)

    def iommu_get_info(self):
        """VFIO_IOMMU_GET_INFO, asked twice as a careful caller does (the
        first answer gives the ``argsz`` the capability chain needs) -> dict:
        ``flags``, ``iova_pgsizes``, ``argsz``, ``cap_offset``, ``iova_ranges``
        (inclusive (start, end) pairs) and ``dma_avail`` from the chain."""
        argsz = ffi.sizeof("struct vfio_iommu_type1_info")
        while True:
            raw = ffi.new("char[]", argsz)
            info = ffi.cast("struct vfio_iommu_type1_info *", raw)
            info.argsz = argsz
            self.ioctl(uapi.VFIO_IOMMU_GET_INFO, info, size=argsz)
            if info.argsz <= argsz:
                break
            argsz = info.argsz
        out = {"flags": info.flags, "iova_pgsizes": info.iova_pgsizes, "argsz": info.argsz,
               "cap_offset": info.cap_offset, "iova_ranges": None, "dma_avail": None}
        data = ffi.buffer(raw, argsz)[:]
        off = info.cap_offset
        while off:
            cap_id, _version, nxt = struct.unpack_from("<HHI", data, off)
            if cap_id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                n = struct.unpack_from("<I", data, off + 8)[0]
                out["iova_ranges"] = [struct.unpack_from("<QQ", data, off + 16 + 16 * i) for i in range(n)]
            elif cap_id == uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                out["dma_avail"] = struct.unpack_from("<I", data, off + 8)[0]
            off = nxt
        return out

    def map_dma(self, vaddr, iova, size,
                flags=uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE):
        """VFIO_IOMMU_MAP_DMA of ``size`` bytes at ``vaddr`` to IOVA ``iova``."""
        c = _new("vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr, iova=iova, size=size)
        self.ioctl(uapi.VFIO_IOMMU_MAP_DMA, c)

    def unmap_dma(self, iova, size, flags=0):
        """VFIO_IOMMU_UNMAP_DMA -> bytes unmapped (0 when nothing was mapped).
        The OSError of a failed call carries ``unmapped``: the struct's
        ``size`` afterwards (the bytes unmapped when the unmap itself failed
        and the struct was written back; the value sent after an argument
        error, which writes nothing)."""
        c = _new("vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
        try:
            self.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, c)
        except OSError as e:
            e.unmapped = c.size
            raise
        return c.size


class VfioDevice(Node):
    """An open VFIO cdev node, by node name (``vfio0``) or device name (BDF).

    Besides BIND/ATTACH/DETACH: the PCI device behind it (reference
    vfio-device.md): region info and region access by pread/pwrite at
    ``index << 40``, config-space helpers, IRQ info, SET_IRQS with the
    caller's eventfds, reset and the cdev form of hot reset.
    """

    frame_offset = wire.VFIO_FRAME_OFFSET

    def __init__(self, mount, name, frames=False):
        if not name.startswith("vfio"):
            with open(os.path.join(mount, "devices", name, "info")) as f:
                name = json.load(f)["vfio"]
        super().__init__(os.path.join(mount, "vfio", "devices", name), frames)

    def bind(self, iommufd):
        """VFIO_DEVICE_BIND_IOMMUFD to an open Iommufd (or fd number) -> dev_id."""
        fd = iommufd if isinstance(iommufd, int) else iommufd.fileno()
        c = _new("vfio_device_bind_iommufd", iommufd=fd)
        self.ioctl(uapi.VFIO_DEVICE_BIND_IOMMUFD, c)
        return c.out_devid

    def attach(self, pt_id, pasid=None):
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT (RID, or a PASID) -> attached HWPT id."""
        c = _new("vfio_device_attach_iommufd_pt", pt_id=pt_id)
        if pasid is not None:
            c.flags, c.pasid = uapi.VFIO_DEVICE_ATTACH_PASID, pasid
        self.ioctl(uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, c)
        return c.pt_id

    def detach(self, pasid=None):
        """VFIO_DEVICE_DETACH_IOMMUFD_PT (RID, or a PASID)."""
        c = _new("vfio_device_detach_iommufd_pt")
        if pasid is not None:
            c.flags, c.pasid = uapi.VFIO_DEVICE_DETACH_PASID, pasid
        self.ioctl(uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, c)

    def get_info(self):
        """VFIO_DEVICE_GET_INFO -> dict (flags, num_regions, num_irqs, cap_offset)."""
        c = _new("vfio_device_info")
        self.ioctl(uapi.VFIO_DEVICE_GET_INFO, c)
        return {"flags": c.flags, "num_regions": c.num_regions, "num_irqs": c.num_irqs,
                "cap_offset": c.cap_offset}

    # -- the PCI device (vfio-device.md §3, §4) --------------------------------------
    REGION_SHIFT = 40
    CONFIG = uapi.VFIO_PCI_CONFIG_REGION_INDEX

    def region_info(self, index):
        """VFIO_DEVICE_GET_REGION_INFO -> dict (flags, size, offset, cap_offset)."""
        c = _new("vfio_region_info", index=index)
        self.ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, c)
        return {"flags": c.flags, "size": c.size, "offset": c.offset, "cap_offset": c.cap_offset}

    def region_read(self, index, offset, size):
        """pread of ``size`` bytes at ``offset`` in region ``index`` -> bytes
        (short at a BAR's end; OSError with the kernel's errno)."""
        return os.pread(self.fd, size, (index << self.REGION_SHIFT) | offset)

    def region_write(self, index, offset, data):
        """pwrite of ``data`` at ``offset`` in region ``index`` -> bytes written."""
        return os.pwrite(self.fd, data, (index << self.REGION_SHIFT) | offset)

    def config_read(self, offset, size):
        """Config space (region 7) as an integer of ``size`` (1, 2, 4) bytes."""
        return int.from_bytes(self.region_read(self.CONFIG, offset, size), "little")

    def config_write(self, offset, size, value):
        """Write an integer of ``size`` bytes into config space."""
        self.region_write(self.CONFIG, offset, value.to_bytes(size, "little"))

    def capabilities(self):
        """The standard capability list from config space: [(id, offset)]."""
        out, seen = [], set()
        if not self.config_read(0x06, 2) & 0x10:
            return out
        pos = self.config_read(0x34, 1) & ~3
        while pos and pos not in seen:
            seen.add(pos)
            out.append((self.config_read(pos, 1), pos))
            pos = self.config_read(pos + 1, 1) & ~3
        return out

    def ext_capabilities(self):
        """The extended capability list (config 0x100..): [(id, offset)]."""
        out, pos, seen = [], 0x100, set()
        while pos and pos not in seen:
            seen.add(pos)
            hdr = self.config_read(pos, 4)
            if hdr == 0:
                break
            out.append((hdr & 0xFFFF, pos))
            pos = (hdr >> 20) & 0xFFC
        return out

    def irq_info(self, index):
        """VFIO_DEVICE_GET_IRQ_INFO -> (flags, count)."""
        c = _new("vfio_irq_info", index=index)
        self.ioctl(uapi.VFIO_DEVICE_GET_IRQ_INFO, c)
        return c.flags, c.count

    def set_irqs(self, index, flags, start=0, count=0, data=b"", argsz=None):
        """VFIO_DEVICE_SET_IRQS with ``data`` (bytes after the header)."""
        buf = ffi.new("char[]", 20 + len(data))
        hdr = ffi.cast("struct vfio_irq_set *", buf)
        hdr.argsz = 20 + len(data) if argsz is None else argsz
        hdr.flags, hdr.index, hdr.start, hdr.count = flags, index, start, count
        ffi.memmove(buf + 20, data, len(data))
        return self.ioctl(uapi.VFIO_DEVICE_SET_IRQS, hdr, size=20 + len(data))

    def set_irq_eventfds(self, index, fds, start=0):
        """Bind eventfds (-1: none) to vectors ``start..``: TRIGGER|DATA_EVENTFD."""
        return self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
                             start, len(fds), struct.pack(f"<{len(fds)}i", *fds))

    def trigger_irq(self, index, start=0, count=1):
        """Loopback trigger: TRIGGER|DATA_NONE (count 0 disables the index)."""
        return self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
                             start, count)

    def reset(self):
        """VFIO_DEVICE_RESET."""
        return self.ioctl(uapi.VFIO_DEVICE_RESET)

    def hot_reset_info(self, capacity=8):
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO -> (flags, [(devid, segment, bus, devfn)])."""
        buf = ffi.new("char[]", 12 + 8 * capacity)
        c = ffi.cast("struct vfio_pci_hot_reset_info *", buf)
        c.argsz = 12 + 8 * capacity
        self.ioctl(uapi.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, c, size=12 + 8 * capacity)
        raw = ffi.buffer(buf, 12 + 8 * c.count)[12:]
        return c.flags, [struct.unpack_from("<IHBB", raw, 8 * i) for i in range(c.count)]

    def hot_reset(self):
        """VFIO_DEVICE_PCI_HOT_RESET, cdev form (no group fds)."""
        return self.ioctl(uapi.VFIO_DEVICE_PCI_HOT_RESET, _new("vfio_pci_hot_reset"))


class DeviceDriver(Node):
    """The driver side of an emulated device: ``<mount>/devices/<name>/driver``
    (README, "The driver side"). Each instance is one driver: the PASIDs it
    allocates and the SVA bonds it makes are freed when it is closed."""

    def __init__(self, mount, name, frames=False):
        super().__init__(os.path.join(mount, "devices", name, "driver"), frames)

    def pasid_alloc(self):
        """IOMMUFS_PASID_ALLOC -> a PASID of the device's space (the global
        space for an ENQCMD device)."""
        c = _new("iommufs_pasid")
        self.ioctl(uapi.IOMMUFS_PASID_ALLOC, c)
        return c.pasid

    def pasid_free(self, pasid):
        """IOMMUFS_PASID_FREE."""
        self.ioctl(uapi.IOMMUFS_PASID_FREE, _new("iommufs_pasid", pasid=pasid))

    def sva_bind(self, pid=0):
        """IOMMUFS_SVA_BIND of process ``pid`` (0: this one) -> (handle, pasid)."""
        c = _new("iommufs_sva_bind", pid=pid)
        self.ioctl(uapi.IOMMUFS_SVA_BIND, c)
        return c.out_handle, c.out_pasid

    def sva_unbind(self, handle):
        """IOMMUFS_SVA_UNBIND -> the PASID the bond had."""
        c = _new("iommufs_sva", handle=handle)
        self.ioctl(uapi.IOMMUFS_SVA_UNBIND, c)
        return c.out_pasid

    def sva_get_pasid(self, handle):
        """IOMMUFS_SVA_GET_PASID -> PASID."""
        c = _new("iommufs_sva", handle=handle)
        self.ioctl(uapi.IOMMUFS_SVA_GET_PASID, c)
        return c.out_pasid

    def events(self, count=4096):
        """The pending events (read() of the node): a list of dicts with
        ``type`` ("mm_exit" or "iopf"), ``handle``, ``pasid``, ``pid`` (and
        ``addr``, ``perm`` for "iopf"); [] when none."""
        data = os.read(self.fd, count)
        names = {uapi.IOMMUFS_EVENT_MM_EXIT: "mm_exit", uapi.IOMMUFS_EVENT_IOPF: "iopf"}
        out = []
        for off in range(0, len(data), 32):
            typ, handle, pasid, pid, addr, perm, _ = struct.unpack_from("<IIIiQII", data, off)
            ev = {"type": names.get(typ, typ), "handle": handle, "pasid": pasid, "pid": pid}
            if typ == uapi.IOMMUFS_EVENT_IOPF:
                ev.update(addr=addr, perm=perm)
            out.append(ev)
        return out


PGFAULT = struct.Struct("<IIIIIIQII")      # struct iommu_hwpt_pgfault


class FaultFd:
    """A fault fd (reference §10.1): ``read_groups()`` and ``respond()``;
    usable with select/poll/epoll through ``fileno()``. Closing it releases
    its reference on the FAULT object synchronously (the server is done when
    :meth:`close` returns), so IOMMU_DESTROY of the queue right after the
    close succeeds as in the kernel."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def fileno(self):
        return self.fd

    def read_records(self, count=40 * 256):
        """One read() of ``count`` bytes -> a list of record dicts (flags,
        dev_id, pasid, grpid, perm, addr, length, cookie); [] when empty."""
        data = os.read(self.fd, count)
        keys = ("flags", "dev_id", "pasid", "grpid", "perm", "reserved", "addr", "length", "cookie")
        return [dict(zip(keys, PGFAULT.unpack_from(data, off))) for off in range(0, len(data), 40)]

    def read_groups(self, count=40 * 256):
        """As :meth:`read_records`, grouped: a list of lists of records, each
        ending with the LAST_PAGE one."""
        groups, cur = [], []
        for r in self.read_records(count):
            cur.append(r)
            if r["flags"] & uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE:
                groups.append(cur)
                cur = []
        return groups

    def respond(self, *answers):
        """Write page responses: ``(cookie, code)`` pairs (code 0 SUCCESS,
        1 INVALID) or bare cookies (SUCCESS). Returns bytes written."""
        data = b"".join(struct.pack("<II", *(a if isinstance(a, tuple) else (a, 0))) for a in answers)
        return os.write(self.fd, data)

    def close(self):
        """Release the fault fd now (IOMMUFS_SYNC_CLOSE), then close it."""
        if self.fd >= 0:
            try:
                _libc.ioctl(self.fd, uapi.IOMMUFS_SYNC_CLOSE, _libc_ffi.NULL)
            finally:
                os.close(self.fd)
                self.fd = -1


class DmaError(OSError):
    """A failed device DMA: ``errno`` is the status, ``iova`` the faulting IOVA,
    ``moved`` the bytes that moved before the fault."""

    def __init__(self, err, iova, moved):
        super().__init__(err, f"DMA failed at IOVA {iova:#x}: {os.strerror(err)}")
        self.iova = iova
        self.moved = moved


class DmaPort:
    """The DMA engine of one emulated device: ``<mount>/devices/<name>/dma``."""

    def __init__(self, mount, name):
        self.fd = os.open(os.path.join(mount, "devices", name, "dma"), os.O_RDWR | os.O_CLOEXEC)

    def _do(self, op, iova, length, data=b"", pasid=None, no_pri=False):
        flags = (1 if pasid is not None else 0) | (2 if no_pri else 0)
        os.write(self.fd, DMA_REQ.pack(wire.IODM_MAGIC, op, flags, pasid or 0, iova, length, 0) + data)
        rep = os.read(self.fd, DMA_REPLY.size + length)
        magic, status, moved, _, fault_iova = DMA_REPLY.unpack_from(rep)
        if status < 0:
            raise DmaError(-status, fault_iova, moved)
        return rep[DMA_REPLY.size:]

    def read(self, iova, length, pasid=None, no_pri=False):
        """Device reads ``length`` bytes of memory at ``iova`` -> bytes."""
        return self._do(1, iova, length, pasid=pasid, no_pri=no_pri)

    def write(self, iova, data, pasid=None, no_pri=False):
        """Device writes ``data`` to memory at ``iova``."""
        self._do(2, iova, len(data), bytes(data), pasid=pasid, no_pri=no_pri)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- IOMMU_TEST_CMD: the kernel's selftest interface (reference §12) ---------------------------
def _returned_path(node, index=0):
    """The mount-relative node path of fd field ``index`` that the last
    fd-returning ioctl on ``node`` returned (README, "Ioctls that return
    file descriptors"): from the frame reply's extra data, or asked with
    IOMMUFS_FD_PATH."""
    if node.frames:
        paths = node.last_extra.split(b"\0")
        return paths[index].decode()
    p = _new("iommufs_fd_path", index=index)
    node.ioctl(uapi.IOMMUFS_FD_PATH, p)
    return ffi.string(p.path).decode()


class Selftest:
    """IOMMU_TEST_CMD on an open :class:`Iommufd` (ioctl() or frames, as
    the Iommufd speaks), one method per op. Failures raise OSError with the
    kernel's errno.

        st = Selftest(iommufd)
        stdev, hwpt, idev = st.mock_domain(ioas)
        acc = st.create_access(ioas)          # an open access fd
        acc.write(iova, b"hello")
        acc.close()
    """

    def __init__(self, iommufd):
        self.iommufd = iommufd
        self.mount = os.path.dirname(iommufd.path)

    def cmd(self, op, id=0, **members):
        """Run ``op`` with ``id`` and union ``members`` ({member: {field:
        value}}); returns the struct as written back."""
        c = _new("iommu_test_cmd", op=op, id=id)
        for member, fields in members.items():
            for k, v in fields.items():
                setattr(getattr(c, member), k, v)
        self.iommufd.ioctl(uapi.IOMMU_TEST_CMD, c)
        return c

    def add_reserved(self, ioas_id, start, length):
        """ADD_RESERVED: reserve IOVA ``[start, start+length)`` in the IOAS."""
        self.cmd(uapi.IOMMU_TEST_OP_ADD_RESERVED, ioas_id, add_reserved={"start": start, "length": length})

    def mock_domain(self, pt_id, dev_flags=None):
        """MOCK_DOMAIN (MOCK_DOMAIN_FLAGS with ``dev_flags``): a mock device
        bound and attached to ``pt_id`` -> (stdev_id, hwpt_id, idev_id)."""
        if dev_flags is None:
            c = self.cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id)
        else:
            c = self.cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id,
                         mock_domain_flags={"dev_flags": dev_flags})
        return c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id, c.mock_domain.out_idev_id

    def mock_domain_replace(self, stdev_id, pt_id):
        """MOCK_DOMAIN_REPLACE of the mock device's RID -> the HWPT id attached."""
        c = self.cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev_id, mock_domain_replace={"pt_id": pt_id})
        return c.mock_domain_replace.pt_id

    def md_check_map(self, hwpt_id, iova, length, uptr):
        """MD_CHECK_MAP: every mock page of the IOVA range maps to ``uptr``'s memory."""
        self.cmd(uapi.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt_id,
                 check_map={"iova": iova, "length": length, "uptr": uptr})

    def md_check_refs(self, uptr, length, refs):
        """MD_CHECK_REFS: every page of ``[uptr, uptr+length)`` is pinned ``refs`` times."""
        self.cmd(uapi.IOMMU_TEST_OP_MD_CHECK_REFS, check_refs={"uptr": uptr, "length": length, "refs": refs})

    def create_access(self, ioas_id, flags=uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES):
        """CREATE_ACCESS -> an :class:`AccessFd` (the returned node, opened)."""
        self.cmd(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas_id, create_access={"flags": flags})
        return AccessFd(self, os.path.join(self.mount, _returned_path(self.iommufd)))

    def set_temp_memory_limit(self, limit):
        """SET_TEMP_MEMORY_LIMIT."""
        self.cmd(uapi.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, memory_limit={"limit": limit})

    def trigger_iopf(self, dev_id, pasid=0, grpid=0, perm=0, addr=0):
        """TRIGGER_IOPF: a one-page fault group for the device's {RID, pasid}."""
        self.cmd(uapi.IOMMU_TEST_OP_TRIGGER_IOPF, trigger_iopf={
            "dev_id": dev_id, "pasid": pasid, "grpid": grpid, "perm": perm, "addr": addr})

    def pasid_attach(self, stdev_id, pasid, pt_id):
        """PASID_ATTACH -> the HWPT id attached."""
        c = self.cmd(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev_id, pasid_attach={"pasid": pasid, "pt_id": pt_id})
        return c.pasid_attach.pt_id

    def pasid_replace(self, stdev_id, pasid, pt_id):
        """PASID_REPLACE -> the HWPT id attached."""
        c = self.cmd(uapi.IOMMU_TEST_OP_PASID_REPLACE, stdev_id, pasid_replace={"pasid": pasid, "pt_id": pt_id})
        return c.pasid_replace.pt_id

    def pasid_detach(self, stdev_id, pasid):
        """PASID_DETACH."""
        self.cmd(uapi.IOMMU_TEST_OP_PASID_DETACH, stdev_id, pasid_detach={"pasid": pasid})

    def pasid_check_hwpt(self, stdev_id, pasid, hwpt_id):
        """PASID_CHECK_HWPT: EINVAL unless ``hwpt_id`` (0: nothing) is attached there."""
        self.cmd(uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev_id, pasid_check={"pasid": pasid, "hwpt_id": hwpt_id})


class AccessFd:
    """An open access fd (``fds/access-N``) and the ops that name it by its
    fd number. Closing it destroys the access and releases its pins
    (synchronously: the server is done when :meth:`close` returns)."""

    def __init__(self, selftest, path):
        self.selftest = selftest
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def fileno(self):
        return self.fd

    def pages(self, iova, length, uptr=0, flags=0):
        """ACCESS_PAGES: pin the IOVA range (``uptr``: check the pages are
        this memory) -> the item id."""
        c = self.selftest.cmd(uapi.IOMMU_TEST_OP_ACCESS_PAGES, self.fd, access_pages={
            "iova": iova, "length": length, "uptr": uptr, "flags": flags})
        return c.access_pages.out_access_pages_id

    def destroy_pages(self, item_id):
        """DESTROY_ACCESS_PAGES: unpin an item."""
        self.selftest.cmd(uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, self.fd,
                          destroy_access_pages={"access_pages_id": item_id})

    def read(self, iova, length, slow_path=False):
        """ACCESS_RW read of ``length`` bytes at ``iova`` -> bytes."""
        out = ffi.new("char[]", max(length, 1))
        self._rw(iova, length, int(ffi.cast("uintptr_t", out)), slow_path and uapi.MOCK_ACCESS_RW_SLOW_PATH)
        return ffi.buffer(out, length)[:]

    def write(self, iova, data, slow_path=False):
        """ACCESS_RW write of ``data`` at ``iova``."""
        src = ffi.new("char[]", bytes(data) or b"\0")
        self._rw(iova, len(data), int(ffi.cast("uintptr_t", src)),
                 uapi.MOCK_ACCESS_RW_WRITE | (slow_path and uapi.MOCK_ACCESS_RW_SLOW_PATH))

    def _rw(self, iova, length, uptr, flags):
        self.selftest.cmd(uapi.IOMMU_TEST_OP_ACCESS_RW, self.fd,
                          access_rw={"iova": iova, "length": length, "uptr": uptr, "flags": int(flags)})

    def replace_ioas(self, ioas_id):
        """ACCESS_REPLACE_IOAS."""
        self.selftest.cmd(uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, self.fd,
                          access_replace_ioas={"ioas_id": ioas_id})

    def close(self):
        """Destroy the access now (IOMMUFS_SYNC_CLOSE), then close the fd."""
        if self.fd >= 0:
            try:
                _libc.ioctl(self.fd, uapi.IOMMUFS_SYNC_CLOSE, _libc_ffi.NULL)
            finally:
                os.close(self.fd)
                self.fd = -1
