"""The fuzz client of tests/test_fuzz.py: one process hammering a mount.

Run as ``python tests/fuzzkit.py MOUNT SEED WORKER SECONDS STATUS_FILE``.
Every choice comes from ``random.Random(f"{SEED}:{WORKER}")``, so a worker
replays the same sequence of calls for the same seed (what the server
answers may still differ where several workers race for one device).

What it sends, on every node kind (iommu, vfio/devices/vfioN,
devices/<name>/{dma,driver,info}, and the fault and access fds that
IOMMU_FAULT_QUEUE_ALLOC and IOMMU_TEST_CMD CREATE_ACCESS return):

- real ioctl() calls, with command numbers of the node's uAPI set and
  random ones, and the argument as a struct whose fields (size, ids, flags,
  IOVAs, lengths, pointer fields) are drawn from edge values, placed in
  writable memory, in a read-only page, straddling the end of a page into
  a PROT_NONE page, or replaced by a bad pointer (NULL, unmapped, the last
  pages of the address space, kernel and non-canonical addresses);
- IOFS and IODM request frames built the same way, then often mutated
  (bytes flipped, truncated, lengths and magic wrong), and replies read
  with odd buffer sizes, twice, or never;
- read, write, poll, pread and pwrite with odd sizes and offsets;
- well-formed calls between them (IOAS_ALLOC, MAP with fixed and picked
  IOVAs and huge leaves, allowed and reserved ranges, UNMAP, COPY, BIND,
  ATTACH, HWPTs with fault queues, accesses, PASIDs, SVA binds, DMA that
  translates and SVA DMA at our own addresses), so that the bad ones meet
  live state.

The server writes where the structs say: everything it may legitimately
write lies in this process's scratch and RAM areas, the latter followed by
4 MiB of spill and a PROT_NONE guard, so a worker never dies of what it
asked for. Under the preload shim (LD_PRELOAD, as test_fuzz.py runs its
first worker) fd-returning ioctls come back with the fd opened by the shim.

Every call must end with a result or an errno. ENOTCONN and ECONNABORTED
(the server is gone) stop the worker at once. (EIO is not one of them:
MD_CHECK_REFS answers it as the kernel does; an exception inside core is
EIO too, and the test finds its traceback in the server's log.) Before each call the worker
writes its number and a one-line description into STATUS_FILE (an mmap: no
syscall), so a parent that finds it hung can say which call it was. At the
end it closes everything and prints one JSON line of statistics.
"""
import ctypes
import errno
import faulthandler
import json
import mmap
import os
import random
import select
import signal
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core import uapi  # noqa: E402
from core.uapi import ffi  # noqa: E402

PAGE = 4096
HUGE = 2 << 20
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
FATAL = (errno.ENOTCONN, errno.ECONNABORTED)
STATUS_SIZE = 4096
VFIO_FRAME_OFFSET = 0xF5 << 40      # core/wire.py
MAX_FDS = 24

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_NONE, PROT_READ, PROT_RW = 0, 1, 3

# Addresses no process can read: the last pages of the address space (the
# top-of-memory wrap-around class of issue 8), kernel and non-canonical ones.
LAST_PAGES = (0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFF800, 0xFFFFFFFFFFFFFFF0, 0xFFFFFFFFFFFFFFF8,
              0xFFFFFFFFFFFFFFFC, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFE000, 0xFFFFFFFFFFFFEFF8)
KERNEL = (0xFFFF800000000000, 0xFFFF888000000000, 0xFFFFFFFF81000000, 0xFFFFFFFFFF600000,
          0xFFFFC90000000000)
NONCANONICAL = (0x0000800000000000, 0x00007FFFFFFFF000, 0x00007FFFFFFFFFF8, 0x8000000000000000,
                0xDEAD000000000000, 0x7FFFFFFFFFFFF000, 0x0001000000000000)
SMALL = (0, 1, 8, 0x1000, 0xFFF)

# Command numbers per node kind (README, "Implemented ioctls", "Private
# ioctls", "The driver side").
IOMMU_CMDS = [uapi._io(nr) for nr in range(0x80, 0xA1)] + [
    uapi.VFIO_GET_API_VERSION, uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_SET_IOMMU,
    uapi.VFIO_IOMMU_GET_INFO, uapi.VFIO_IOMMU_MAP_DMA, uapi.VFIO_IOMMU_UNMAP_DMA,
    uapi.VFIO_IOMMU_DIRTY_PAGES, uapi._io(0x7F), uapi._io(0x40), uapi._io(0xA1), uapi._io(0xFF)]
VFIO_CMDS = [uapi._io(uapi.VFIO_BASE + i) for i in range(0, 24)]
PRIVATE_CMDS = [(uapi.IOMMUFS_TYPE << 8) | nr for nr in (0, 2, 3, 4, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0xFF)]
DRIVER_CMDS = [uapi.IOMMUFS_PASID_ALLOC, uapi.IOMMUFS_PASID_FREE, uapi.IOMMUFS_SVA_BIND,
               uapi.IOMMUFS_SVA_UNBIND, uapi.IOMMUFS_SVA_GET_PASID]
# The legacy group API on vfio/N (core/vfio/group.py).
GROUP_GET_STATUS, GROUP_SET_CONTAINER, GROUP_UNSET_CONTAINER, GROUP_GET_DEVICE_FD = (
    uapi._io(uapi.VFIO_BASE + n) for n in (3, 4, 5, 6))
GROUP_CMDS = [GROUP_GET_STATUS, GROUP_SET_CONTAINER, GROUP_UNSET_CONTAINER, GROUP_GET_DEVICE_FD]
CMDS = {
    "iommu": IOMMU_CMDS + PRIVATE_CMDS,
    "container": IOMMU_CMDS + PRIVATE_CMDS,
    "group": GROUP_CMDS * 3 + VFIO_CMDS + PRIVATE_CMDS,
    "vfio": VFIO_CMDS + PRIVATE_CMDS + IOMMU_CMDS[:4],
    "driver": DRIVER_CMDS + PRIVATE_CMDS,
    "fault": PRIVATE_CMDS + IOMMU_CMDS[:8],
    "access": PRIVATE_CMDS + IOMMU_CMDS[:8],
    "dma": PRIVATE_CMDS + IOMMU_CMDS[:4],
    "info": PRIVATE_CMDS + IOMMU_CMDS[:4],
}
# ioctl types the kernel's VFS answers before FUSE (FIFREEZE is 'X', the
# FS_IOC_* set 'f', FIONBIO & co. 'T', FICLONE 0x94, FIBMAP type 0): they
# would test the kernel, or freeze the mount, not fuzz the server.
VFS_TYPES = (0x00, 0x54, 0x58, 0x66, 0x94, 0x12, 0x01)

# The struct each command takes, by the uAPI's names.
STRUCTS = {
    uapi.IOMMU_DESTROY: "iommu_destroy",
    uapi.IOMMU_IOAS_ALLOC: "iommu_ioas_alloc",
    uapi.IOMMU_IOAS_ALLOW_IOVAS: "iommu_ioas_allow_iovas",
    uapi.IOMMU_IOAS_COPY: "iommu_ioas_copy",
    uapi.IOMMU_IOAS_IOVA_RANGES: "iommu_ioas_iova_ranges",
    uapi.IOMMU_IOAS_MAP: "iommu_ioas_map",
    uapi.IOMMU_IOAS_UNMAP: "iommu_ioas_unmap",
    uapi.IOMMU_OPTION: "iommu_option",
    uapi.IOMMU_VFIO_IOAS: "iommu_vfio_ioas",
    uapi.IOMMU_HWPT_ALLOC: "iommu_hwpt_alloc",
    uapi.IOMMU_GET_HW_INFO: "iommu_hw_info",
    uapi.IOMMU_FAULT_QUEUE_ALLOC: "iommu_fault_alloc",
    uapi.IOMMU_IOAS_MAP_FILE: "iommu_ioas_map_file",
    uapi.IOMMU_VEVENTQ_ALLOC: "iommu_veventq_alloc",
    uapi.IOMMU_TEST_CMD: "iommu_test_cmd",
    uapi.VFIO_IOMMU_GET_INFO: "vfio_iommu_type1_info",
    uapi.VFIO_IOMMU_MAP_DMA: "vfio_iommu_type1_dma_map",
    uapi.VFIO_IOMMU_UNMAP_DMA: "vfio_iommu_type1_dma_unmap",
    uapi.IOMMUFS_FD_PATH: "iommufs_fd_path",
    uapi.IOMMUFS_PASID_ALLOC: "iommufs_pasid",
    uapi.IOMMUFS_PASID_FREE: "iommufs_pasid",
    uapi.IOMMUFS_SVA_BIND: "iommufs_sva_bind",
    uapi.IOMMUFS_SVA_UNBIND: "iommufs_sva",
    uapi.IOMMUFS_SVA_GET_PASID: "iommufs_sva",
}
VFIO_STRUCTS = {
    uapi.VFIO_DEVICE_BIND_IOMMUFD: "vfio_device_bind_iommufd",
    uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT: "vfio_device_attach_iommufd_pt",
    uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT: "vfio_device_detach_iommufd_pt",
    uapi.VFIO_DEVICE_GET_INFO: "vfio_device_info",
}
# VFIO commands whose struct core/uapi.py does not declare: the fixed size.
VFIO_ARGSZ = {uapi.VFIO_DEVICE_SET_IRQS: 20, uapi.VFIO_DEVICE_GET_REGION_INFO: 32,
              uapi.VFIO_DEVICE_GET_IRQ_INFO: 16}
# Commands whose argument is a value, not a pointer.
INT_CMDS = (uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_SET_IOMMU, uapi.VFIO_GET_API_VERSION)

# IOMMU_TEST_CMD ops whose ``id`` is an access fd of the caller.
ACCESS_FD_OPS = frozenset((uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, uapi.IOMMU_TEST_OP_ACCESS_PAGES,
                           uapi.IOMMU_TEST_OP_ACCESS_RW, uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS))
# IOMMU_TEST_CMD: op -> the union member it fills.
TEST_OPS = {
    uapi.IOMMU_TEST_OP_ADD_RESERVED: "add_reserved",
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN: "mock_domain",
    uapi.IOMMU_TEST_OP_MD_CHECK_MAP: "check_map",
    uapi.IOMMU_TEST_OP_MD_CHECK_REFS: "check_refs",
    uapi.IOMMU_TEST_OP_CREATE_ACCESS: "create_access",
    uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: "destroy_access_pages",
    uapi.IOMMU_TEST_OP_ACCESS_PAGES: "access_pages",
    uapi.IOMMU_TEST_OP_ACCESS_RW: "access_rw",
    uapi.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: "memory_limit",
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: "mock_domain_replace",
    uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: "access_replace_ioas",
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: "mock_domain_flags",
    uapi.IOMMU_TEST_OP_DIRTY: "dirty",
    uapi.IOMMU_TEST_OP_MD_CHECK_IOTLB: "check_iotlb",
    uapi.IOMMU_TEST_OP_TRIGGER_IOPF: "trigger_iopf",
    uapi.IOMMU_TEST_OP_PASID_ATTACH: "pasid_attach",
    uapi.IOMMU_TEST_OP_PASID_REPLACE: "pasid_replace",
    uapi.IOMMU_TEST_OP_PASID_DETACH: "pasid_detach",
    uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT: "pasid_check",
}

POINTER_FIELDS = {"user_va", "allowed_iovas", "data_uptr", "uptr", "vaddr", "token_uuid_ptr"}
IOVA_FIELDS = {"iova", "dst_iova", "src_iova", "start", "last", "addr"}
LENGTH_FIELDS = {"length", "data_len", "num_iovas", "size", "page_size", "limit", "veventq_depth"}
ID_FIELDS = {"id", "ioas_id", "dst_ioas_id", "src_ioas_id", "dev_id", "pt_id", "hwpt_id",
             "fault_id", "object_id", "viommu_id", "access_pages_id", "handle"}
FD_FIELDS = {"iommufd", "fd", "dmabuf_fd"}

DMA_REQ = struct.Struct("<4sIIIQII")
FRAME_HDR = struct.Struct("<4sIII")


def _returned_kind(rel):
    """The kind of a returned fd's node (fds/fault-N, fds/access-N,
    fds/vfio-dev-N: a group's device fd, a VFIO device file)."""
    name = rel.rsplit("/", 1)[-1]
    return "vfio" if name.startswith("vfio-dev") else "fault" if name.startswith("fault") else "access"


class Interrupted(Exception):
    """A DMA reply's read() ran past its timer (a PRI wait nobody answers)."""


_armed = False


def _alarm(signum, frame):
    # Only inside _timed_read: a timer that fires just after the read ended
    # must not raise in the caller's bookkeeping.
    if _armed:
        raise Interrupted()


def _timed_read(fd, size):
    global _armed
    _armed = True
    try:
        return os.read(fd, size)
    finally:
        _armed = False


def _mmap(length, prot=PROT_RW):
    a = _libc.mmap(None, length, prot, 0x22, -1, 0)     # MAP_PRIVATE | MAP_ANONYMOUS
    if a in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return a


def _unmapped_page():
    """An address with nothing mapped at it, now and later: far below
    where mmap() places anything (a page just unmapped would be the next
    mmap's, and the server would write there). Probed, since under ASan
    its shadow covers much of the low half."""
    for addr in (1 << 45, 0x7E0000000000, 0x7D0000000000, 1 << 46):
        a = _libc.mmap(addr, PAGE, PROT_NONE, 0x22 | 0x100000, -1, 0)   # MAP_FIXED_NOREPLACE
        if a == addr:
            _libc.munmap(a, PAGE)
            return addr
        if a not in (None, ctypes.c_void_p(-1).value):
            _libc.munmap(a, PAGE)       # a kernel without NOREPLACE put it elsewhere
    raise RuntimeError("no unmapped page found")


class Memory:
    """The worker's memory: a writable scratch area for arguments, a RAM
    buffer to map and DMA into, a read-only page, a page that runs into a
    PROT_NONE page (for arguments straddling a page end) and a hole."""

    def __init__(self):
        self.scratch = _mmap(8 * PAGE)
        # 4 MiB at a 2 MiB boundary, to map with huge leaves.
        region = _mmap(3 * HUGE)
        self.huge = (region + HUGE - 1) & ~(HUGE - 1)
        # The server writes where a struct tells it to (ACCESS_RW, dirty
        # bitmaps, IOVA_RANGES arrays, SVA DMA) and lengths are drawn too:
        # behind the RAM buffer lie 4 MiB that may be trashed, then a
        # PROT_NONE page that stops the rest, so no write reaches the heap.
        self.ram_len = 16 * PAGE
        spill = 4 << 20
        self.ram = _mmap(self.ram_len + spill + PAGE)
        _libc.mprotect(self.ram + self.ram_len + spill, PAGE, PROT_NONE)
        base = _mmap(4 * PAGE)
        self.ro = base
        self.edge = base + 2 * PAGE          # end of the page before the PROT_NONE one
        self.none = base + 2 * PAGE
        _libc.mprotect(self.ro, PAGE, PROT_READ)
        _libc.mprotect(self.none, PAGE, PROT_NONE)
        self.hole = _unmapped_page()
        ctypes.memmove(self.ram, os.urandom(self.ram_len), self.ram_len)

    def put(self, addr, data):
        ctypes.memmove(addr, bytes(data), len(data))

    def put_ro(self, off, data):
        _libc.mprotect(self.ro, PAGE, PROT_RW)
        ctypes.memmove(self.ro + off, bytes(data), len(data))
        _libc.mprotect(self.ro, PAGE, PROT_READ)

    def get(self, addr, n):
        return ctypes.string_at(addr, n)


class Worker:
    """One fuzz client (see the module docstring)."""

    def __init__(self, mnt, seed, wid, seconds, status_path):
        self.mnt = mnt
        self.wid = wid
        self.rng = random.Random(f"{seed}:{wid}")
        self.deadline = time.monotonic() + seconds
        self.mem = Memory()
        fd = os.open(status_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, STATUS_SIZE)
        self.status = mmap.mmap(fd, STATUS_SIZE)
        os.close(fd)
        self.calls = 0
        self.by_kind = {}
        self.errnos = {}
        self.fatal = None
        # Under the preload shim (test_fuzz.py's worker 0), fd-returning
        # ioctls come back with an fd already open.
        self.shimmed = "libiommufs-preload" in os.environ.get("LD_PRELOAD", "")
        self.eventfds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2)]
        with open("/proc/self/maps") as f:
            assert self.shimmed == ("libiommufs-preload" in f.read()), "the shim is not loaded"
        self.adopted = 0
        self.reached = {}            # well-formed calls that succeeded, by struct
        self.fds = {}                # fd -> {"kind", "dev", ...}
        self.ioas = []               # (iommu fd, ioas id)
        self.hwpts = []
        self.dev_ids = []            # (vfio fd, dev_id, iommu fd)
        self.fault_ids = []
        self.access_fds = []
        self.maps = []               # (iommu fd, ioas id, iova, length) mapped
        self.pt_ioas = {}            # (iommu fd, pt id) -> the IOAS under it
        self.attached = {}           # vfio fd -> (device name, iommu fd, IOAS id)
        self.bonds = []              # (driver fd, device name, PASID) of SVA binds
        self.devices = []
        for name in sorted(os.listdir(os.path.join(mnt, "devices"))):
            with open(os.path.join(mnt, "devices", name, "info")) as f:
                self.devices.append(json.load(f))
        signal.signal(signal.SIGALRM, _alarm)

    # -- bookkeeping ----------------------------------------------------------------------
    def call(self, kind, desc, fn, *args):
        """Run one call: count it, note it in the status file, return its
        result or -errno. A fatal errno stops the worker."""
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        line = f"{self.calls} {kind} {desc}".encode()[:STATUS_SIZE - 9]
        self.status[8:8 + len(line) + 1] = line + b"\0"
        self.status[0:8] = self.calls.to_bytes(8, "little")
        try:
            r = fn(*args)
        except Interrupted:
            self.errnos["timer"] = self.errnos.get("timer", 0) + 1
            return -errno.EINTR
        except OSError as e:
            err = e.errno or 0
            name = errno.errorcode.get(err, str(err))
            self.errnos[name] = self.errnos.get(name, 0) + 1
            if err in FATAL:
                self.fatal = f"call {self.calls} ({kind} {desc}): {name}"
                raise SystemExit(3)
            return -err
        self.errnos["ok"] = self.errnos.get("ok", 0) + 1
        return r

    def ioctl(self, fd, cmd, arg):
        r = _libc.ioctl(fd, cmd, arg)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def open(self, rel, kind, flags=os.O_RDWR, **meta):
        fd = self.call(kind, f"open {rel}", os.open, os.path.join(self.mnt, rel), flags | os.O_CLOEXEC)
        if fd >= 0:
            self.fds[fd] = dict(kind=kind, rel=rel, **meta)
        return fd

    def close(self, fd, sync=False):
        meta = self.fds.pop(fd)
        if sync:
            self.call(meta["kind"], f"fd {fd} SYNC_CLOSE", self.ioctl, fd, uapi.IOMMUFS_SYNC_CLOSE, 0)
        self.call(meta["kind"], f"close {fd}", os.close, fd)
        self.ioas = [x for x in self.ioas if x[0] != fd]
        self.hwpts = [x for x in self.hwpts if x[0] != fd]
        self.dev_ids = [x for x in self.dev_ids if fd not in (x[0], x[2])]
        self.fault_ids = [x for x in self.fault_ids if x[0] != fd]
        self.access_fds = [x for x in self.access_fds if x != fd]
        self.maps = [x for x in self.maps if x[0] != fd]
        self.bonds = [x for x in self.bonds if x[0] != fd]
        self.attached = {v: a for v, a in self.attached.items() if fd not in (v, a[1])}

    def of_kind(self, *kinds):
        return [fd for fd, m in self.fds.items() if m["kind"] in kinds]

    # -- values ---------------------------------------------------------------------------
    def bad_pointer(self):
        r = self.rng
        m = self.mem
        return r.choice((
            lambda: r.choice(SMALL),
            lambda: r.choice(LAST_PAGES),
            lambda: r.choice(KERNEL) + r.randrange(0, 2 * PAGE, 8),
            lambda: r.choice(NONCANONICAL),
            lambda: m.hole + r.randrange(0, PAGE),
            lambda: m.none + r.randrange(0, PAGE),
            lambda: m.edge - r.randrange(1, 17),
            lambda: m.ro + r.randrange(0, PAGE),
            lambda: r.getrandbits(64),
        ))()

    def pointer(self):
        """A pointer field's value: often valid (the RAM buffer), else bad."""
        r = self.rng
        if r.random() < 0.45:
            return self.mem.ram + r.choice((0, PAGE, r.randrange(0, self.mem.ram_len)))
        return self.bad_pointer()

    def length(self):
        r = self.rng
        return r.choice((0, 1, 7, 16, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, self.mem.ram_len,
                         1 << 20, U32, U32 + 1, 1 << 63, U64, U64 - PAGE + 1, r.getrandbits(12),
                         r.getrandbits(32), r.getrandbits(64)))

    def iova(self):
        r = self.rng
        if self.maps and r.random() < 0.3:
            _, _, iova, n = r.choice(self.maps)
            return iova + r.choice((0, 8, PAGE, PAGE - 8, n - 8, n, n - PAGE))
        return r.choice((0, PAGE, 1 << 24, (1 << 31) - PAGE, 0xFEE00000, (1 << 48) - PAGE,
                         1 << 48, U64 - PAGE + 1, U64, r.getrandbits(32) & ~0xFFF,
                         r.getrandbits(48), r.getrandbits(64)))

    def an_id(self):
        r = self.rng
        known = [i for _, i in self.ioas] + [i for _, i in self.hwpts] + \
            [d for _, d, _ in self.dev_ids] + [i for _, i in self.fault_ids]
        if known and r.random() < 0.6:
            return r.choice(known)
        return r.choice((0, 1, 2, 3, 4, 5, 8, 1024, U32, r.getrandbits(32)))

    def an_fd(self):
        r = self.rng
        if self.fds and r.random() < 0.7:
            return r.choice(list(self.fds))
        return r.choice((-1, 0, 1, 2, 999, 0x7FFFFFFF, r.getrandbits(31)))

    def value(self, name, ctype):
        r = self.rng
        bits = ffi.sizeof(ctype) * 8
        mask = (1 << bits) - 1
        if name in POINTER_FIELDS:
            v = self.pointer()
        elif name in IOVA_FIELDS:
            v = self.iova()
        elif name in LENGTH_FIELDS:
            v = self.length()
        elif name in ID_FIELDS:
            v = self.an_id()
        elif name in FD_FIELDS:
            v = self.an_fd()
        elif name.startswith("__reserved") or name in ("pad", "reserved"):
            v = 0 if r.random() < 0.9 else r.getrandbits(bits)
        elif name == "pasid":
            v = r.choice((0, 1, 2, 3, 255, 256, 1024, (1 << 20) - 1, 1 << 20, r.getrandbits(32)))
        elif name == "pid":
            v = r.choice((0, 0, os.getpid(), 1, -1, 0x7FFFFFFF))
        else:
            v = r.choice((0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xF, mask, r.getrandbits(bits)))
        if ctype.cname.startswith("int"):
            v &= mask
            if v >> (bits - 1):
                v -= 1 << bits
            return v
        return v & mask

    def fill(self, cdata, ctype):
        for name, field in ctype.fields:
            t = field.type
            if t.kind == "struct" or t.kind == "union":
                self.fill(getattr(cdata, name), t)
            elif t.kind == "array":
                if name == "path":
                    continue
                sub = getattr(cdata, name)
                for i in range(t.length):
                    sub[i] = self.rng.getrandbits(ffi.sizeof(t.item) * 8)
            elif t.kind == "primitive":
                setattr(cdata, name, self.value(name, t))

    def struct_arg(self, cmd):
        """The argument bytes for ``cmd``: its struct with drawn fields and
        its size word set to an edge or random value, or random bytes for
        a command without a known struct."""
        r = self.rng
        name = STRUCTS.get(cmd) or VFIO_STRUCTS.get(cmd)
        if cmd in VFIO_ARGSZ:
            return self.vfio_arg(cmd)
        if name is None:
            n = r.choice((0, 4, 8, 16, 32, 64))
            data = bytearray(r.getrandbits(8) for _ in range(n))
            if n >= 4 and r.random() < 0.7:
                struct.pack_into("<I", data, 0, r.choice((0, 4, 8, 16, n, U32)))
            return bytes(data)
        ctype = ffi.typeof(f"struct {name}")
        c = ffi.new(f"struct {name} *")
        if name == "iommu_test_cmd":
            op = r.choice(list(TEST_OPS)) if r.random() < 0.9 else r.getrandbits(32)
            c.op = op
            c.id = self.an_id() if op not in ACCESS_FD_OPS or not self.access_fds \
                else r.choice(self.access_fds)
            member = TEST_OPS.get(op)
            if member:
                self.fill(getattr(c, member), ffi.typeof(getattr(c, member)))
        else:
            self.fill(c, ctype)
        sizeof = ffi.sizeof(ctype)
        minsz = _MIN.get(name, 8)
        size = r.choice((sizeof, sizeof, sizeof, 0, 1, 4, minsz - 1, minsz, sizeof - 1,
                         sizeof + 4, sizeof + 8, PAGE, U32, r.getrandbits(32)))
        first = ctype.fields[0][0]
        setattr(c, first, size & U32)
        data = bytes(ffi.buffer(c))
        if r.random() < 0.15:
            # A tail past the kernel's struct: zero, or not (E2BIG).
            data += bytes(r.choice((4, 8, 64))) if r.random() < 0.5 else os.urandom(8)
        return data

    def group_arg(self, cmd):
        """The argument of a group ioctl: GET_STATUS's {argsz, flags};
        SET_CONTAINER's s32 fd (ours, of any kind, or junk); GET_DEVICE_FD's
        device name as a C string (a member, another device, junk, or one
        with no NUL before the end of its page)."""
        r = self.rng
        m = self.mem
        if cmd == GROUP_GET_STATUS:
            return self.place(struct.pack("<II", r.choice((8, 8, 0, 7, U32)), r.getrandbits(32)))
        if cmd == GROUP_SET_CONTAINER:
            mine = self.of_kind("iommu", "container")
            fd = r.choice(mine) if mine and r.random() < 0.7 else self.an_fd()
            return self.place(struct.pack("<i", fd))
        if cmd == GROUP_GET_DEVICE_FD:
            name = r.choice(self.devices)["name"].encode()
            x = r.random()
            if x < 0.6:
                return self.place(name + b"\0")
            if x < 0.75:
                # No NUL until the PROT_NONE page.
                n = r.choice((len(name), 16, 300))
                text = (name * 40)[:n]
                m.put(m.edge - n, text)
                return m.edge - n
            return self.place(os.urandom(r.choice((0, 1, 8, 64))))
        return self.place(b"")

    def vfio_arg(self, cmd):
        """VFIO_DEVICE_SET_IRQS / GET_REGION_INFO / GET_IRQ_INFO: argsz,
        flags, index, then SET_IRQS's start, count and data (eventfds of
        ours, -1, junk: the server takes fds with pidfd_getfd)."""
        r = self.rng
        fixed = VFIO_ARGSZ[cmd]
        flags = r.choice((0, 1, 2, 4, 4 | 32, 4 | 8, 1 | 16, 2 | 32, r.getrandbits(32)))
        index = r.choice((0, 1, 2, 3, 4, 5, 7, 8, 9, U32))
        if cmd != uapi.VFIO_DEVICE_SET_IRQS:
            body = struct.pack("<II", flags, index) + bytes(fixed - 12)
            return struct.pack("<I", r.choice((fixed, fixed, 0, fixed - 1, U32))) + body
        count = r.choice((0, 1, 2, 4, 64, U32))
        n = min(count, 8)
        if flags & 4 and r.random() < 0.9:
            data = b"".join(struct.pack("<i", r.choice(self.eventfds + [-1, -1, 0, 9999, r.getrandbits(31)]))
                            for _ in range(n))
        else:
            data = bytes(r.getrandbits(8) for _ in range(n))
        argsz = r.choice((fixed + len(data), fixed + len(data), fixed, fixed - 1, 0, U32))
        return struct.pack("<IIIII", argsz, flags, index, r.choice((0, 1, 2, U32)), count) + data

    def place(self, data):
        """Where the argument lives: the address passed to ioctl()."""
        r = self.rng
        m = self.mem
        x = r.random()
        if x < 0.6:
            off = r.choice((0, 8, 64, 512)) if r.random() < 0.8 else r.randrange(0, 2 * PAGE)
            m.put(m.scratch + off, data[:8 * PAGE - off])
            return m.scratch + off
        if x < 0.7:
            off = r.choice((0, PAGE - len(data) if len(data) <= PAGE else 0, 128))
            off = max(0, min(off, PAGE - len(data)))
            m.put_ro(off, data[:PAGE])
            return m.ro + off
        if x < 0.8 and data:
            k = r.randrange(0, len(data))
            m.put(m.edge - k, data[:k])
            return m.edge - k
        return self.bad_pointer()

    # -- the calls -----------------------------------------------------------------------
    def a_cmd(self, kind):
        r = self.rng
        if r.random() < 0.85:
            return r.choice(CMDS[kind])
        while True:
            t = r.choice((0x3B, 0xF5, r.getrandbits(8)))
            if t in VFS_TYPES:
                continue
            cmd = (t << 8) | r.getrandbits(8)
            if r.random() < 0.2:
                cmd |= (r.choice((1, 2, 3)) << 30) | (r.getrandbits(6) << 16)
            return cmd

    def fuzz_ioctl(self, fd):
        r = self.rng
        kind = self.fds[fd]["kind"]
        cmd = self.a_cmd(kind)
        if cmd == uapi.IOMMUFS_SYNC_CLOSE:
            cmd = uapi.IOMMUFS_NULL
        if cmd in INT_CMDS:
            arg = r.choice((0, 1, 3, 4, 6, 8, 9, 10, U32, r.getrandbits(64)))
        elif r.random() < 0.1:
            arg = self.bad_pointer()
        elif kind == "group" and cmd in GROUP_CMDS:
            arg = self.group_arg(cmd)
        else:
            arg = self.place(self.struct_arg(cmd))
        res = self.call(kind, f"fd {fd} ioctl {cmd:#x} arg {arg:#x}", self.ioctl, fd, cmd, arg)
        if res >= 0 and kind == "group" and cmd == GROUP_GET_DEVICE_FD:
            self.returned(fd, res if self.shimmed else -1)
        if res == 0 and cmd in (uapi.IOMMU_FAULT_QUEUE_ALLOC, uapi.IOMMU_TEST_CMD):
            # Success means the struct was read and written back: it is ours.
            fd_off = 12 if cmd == uapi.IOMMU_FAULT_QUEUE_ALLOC else 16
            if cmd == uapi.IOMMU_FAULT_QUEUE_ALLOC or \
                    self.mem.get(arg + 4, 4) == struct.pack("<I", uapi.IOMMU_TEST_OP_CREATE_ACCESS):
                self.returned(fd, struct.unpack("<i", self.mem.get(arg + fd_off, 4))[0])

    def fuzz_frame(self, fd):
        r = self.rng
        kind = self.fds[fd]["kind"]
        if kind == "dma":
            data = self.dma_frame()
        else:
            cmd = self.a_cmd(kind if kind in CMDS else "iommu")
            if r.random() < 0.05:
                cmd = 0 if r.random() < 0.3 else r.getrandbits(32)
            if cmd == uapi.IOMMUFS_SYNC_CLOSE or (cmd == 0 and r.random() < 0.7):
                cmd = uapi.IOMMUFS_NULL
            if cmd in INT_CMDS:
                arg = r.getrandbits(64).to_bytes(8, "little")[:r.choice((8, 8, 4, 0, 1))]
            else:
                arg = self.struct_arg(cmd)
            hdr = [b"IOFS", cmd, len(arg), 0]
            if r.random() < 0.1:
                hdr[0] = r.choice((b"IOFZ", b"\0\0\0\0", b"IODM", os.urandom(4)))
            if r.random() < 0.1:
                hdr[2] = r.choice((0, 1, len(arg) + 1, max(len(arg) - 1, 0), U32, 1 << 20))
            if r.random() < 0.05:
                hdr[3] = r.getrandbits(32)
            data = FRAME_HDR.pack(*hdr) + arg
        data = bytearray(data)
        if r.random() < 0.15 and data:
            for _ in range(r.randrange(1, 5)):
                data[r.randrange(len(data))] = r.getrandbits(8)
        if r.random() < 0.1:
            data = data[:r.randrange(0, len(data) + 1)]
        # VFIO device files are seekable: their frames live at one offset
        # (docs/wire-protocol.md), the rest of the file is the regions.
        at = VFIO_FRAME_OFFSET if kind == "vfio" and r.random() < 0.9 else None
        if at is None:
            w = self.call(kind, f"fd {fd} frame write {bytes(data[:40]).hex()} len {len(data)}",
                          os.write, fd, bytes(data))
        else:
            w = self.call(kind, f"fd {fd} frame pwrite {bytes(data[:40]).hex()} len {len(data)}",
                          os.pwrite, fd, bytes(data), at)
        reads = r.choice((1, 1, 1, 1, 1, 0, 2))
        for _ in range(reads):
            size = r.choice((1 << 16, 1 << 16, 1 << 20, 0, 1, 15, 16, 24, 40, 300))
            if at is None:
                rep = self.read(fd, kind, size)
            else:
                rep = self.call(kind, f"fd {fd} pread {size} at frames", os.pread, fd, size, at)
            if w > 0 and isinstance(rep, bytes) and len(rep) >= 16 and rep[:4] == b"IOFS":
                _, result, alen, elen = struct.unpack_from("<4siII", rep)
                if result == 0 and elen:
                    for p in rep[16 + alen:16 + alen + elen].split(b"\0")[:-1]:
                        self.open_node(p.decode(errors="replace"))

    def read(self, fd, kind, size):
        # A DMA reply may wait for a page response nobody gives: a timer ends it.
        timed = kind == "dma"
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0.25)
        try:
            return self.call(kind, f"fd {fd} read {size}", _timed_read if timed else os.read, fd, size)
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def dma_frame(self):
        r = self.rng
        op = r.choice((1, 2, 1, 2, 0, 3, r.getrandbits(32)))
        flags = r.choice((0, 0, 2, 2, 1, 3, r.getrandbits(32)))
        pasid = r.choice((0, 1, 2, 255, 1 << 20, r.getrandbits(32)))
        length = r.choice((0, 1, 8, PAGE, PAGE + 1, 3 * PAGE, 512 << 10, (512 << 10) + 1, U32,
                           r.getrandbits(13)))
        data = b""
        if op == 2:
            n = length if length <= 4 * PAGE else r.choice((0, 16))
            if r.random() < 0.1:
                n = max(0, n + r.choice((-1, 1, 100)))
            data = bytes(n)
        reserved = 0 if r.random() < 0.9 else r.getrandbits(32)
        return DMA_REQ.pack(b"IODM", op, flags, pasid, self.iova(), length, reserved) + data

    def raw(self, fd):
        r = self.rng
        meta = self.fds[fd]
        kind = meta["kind"]
        x = r.random()
        if x < 0.4:
            self.read(fd, kind, r.choice((0, 1, 8, 32, 39, 40, 80, 400, 4096, 1 << 16)))
        elif x < 0.7:
            if kind == "fault":
                n = r.choice((0, 1, 2, 3))
                data = b"".join(struct.pack("<II", r.choice((0, 1, 2, 3, U32)), r.choice((0, 1, 2, U32)))
                                for _ in range(n))
                if r.random() < 0.2:
                    data += os.urandom(r.randrange(1, 8))
            else:
                data = os.urandom(r.choice((0, 1, 8, 16, 32, 40, 100)))
            self.call(kind, f"fd {fd} write {data.hex()}", os.write, fd, data)
        elif x < 0.85:
            p = select.poll()
            p.register(fd, select.POLLIN | select.POLLOUT | select.POLLPRI)
            self.call(kind, f"fd {fd} poll", p.poll, 0)
        else:
            off = r.choice((0, 1, 7 << 40, (7 << 40) + 4, 6 << 40, 9 << 40, (1 << 63) - 1,
                            r.getrandbits(63)))
            if r.random() < 0.5:
                self.call(kind, f"fd {fd} pread {off:#x}", os.pread, fd, r.choice((1, 4, 64, 4096)), off)
            else:
                self.call(kind, f"fd {fd} pwrite {off:#x}", os.pwrite, fd, os.urandom(r.choice((1, 2, 4))), off)

    def returned(self, fd, value):
        """After an fd-returning ioctl on ``fd`` whose fd field holds
        ``value``: under the preload shim that is an fd it opened for us
        (adopt it); else -1, and we open the node ourselves."""
        value = int(value)
        if value >= 0 and self.shimmed and value not in self.fds:
            try:
                target = os.readlink(f"/proc/self/fd/{value}")
            except OSError:
                target = ""
            if "/fds/" in target:
                rel = target[target.index("/fds/") + 1:]
                kind = _returned_kind(rel)
                self.fds[value] = dict(kind=kind, rel=rel)
                self.adopted += 1
                if kind == "access":
                    self.access_fds.append(value)
                return value
        return self.open_returned(fd)

    def open_returned(self, fd):
        """Open the node of an fd the last ioctl on ``fd`` returned, as the
        Python client and the shim do (IOMMUFS_FD_PATH)."""
        p = ffi.new("struct iommufs_fd_path *")
        p.size = ffi.sizeof(p[0])
        buf = bytes(ffi.buffer(p))
        self.mem.put(self.mem.scratch + 4 * PAGE, buf)
        kind = self.fds[fd]["kind"]
        if self.call(kind, f"fd {fd} FD_PATH", self.ioctl, fd, uapi.IOMMUFS_FD_PATH,
                     self.mem.scratch + 4 * PAGE) == 0:
            raw = self.mem.get(self.mem.scratch + 4 * PAGE + 8, 256)
            return self.open_node(raw.split(b"\0")[0].decode(errors="replace"))
        return -1

    def open_node(self, rel):
        kind = _returned_kind(rel)
        if len(self.fds) >= MAX_FDS:
            # Returned nodes pile up fastest: make room, oldest first.
            self.close(next(iter(self.fds)))
        fd = self.open(rel, kind)
        if fd >= 0 and kind == "access":
            self.access_fds.append(fd)
        return fd

    # -- well-formed steps: reach live state ----------------------------------------------
    def ok_ioctl(self, fd, cmd, name, **fields):
        c = ffi.new(f"struct {name} *")
        setattr(c, ffi.typeof(c[0]).fields[0][0], ffi.sizeof(c[0]))
        for k, v in fields.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    setattr(getattr(c, k), kk, vv)
            else:
                setattr(c, k, v)
        addr = self.mem.scratch + 6 * PAGE
        self.mem.put(addr, ffi.buffer(c))
        r = self.call(self.fds[fd]["kind"], f"fd {fd} ok {name}", self.ioctl, fd, cmd, addr)
        ffi.memmove(c, self.mem.get(addr, ffi.sizeof(c[0])), ffi.sizeof(c[0]))
        if r == 0:
            key = f"{name}:{cmd:#x}"
            self.reached[key] = self.reached.get(key, 0) + 1
        return r, c

    def grow(self):
        r = self.rng
        iommus = self.of_kind("iommu")
        step = r.choice((0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 10, 10, 11))
        if step == 0 and iommus:
            fd = r.choice(iommus)
            rc, c = self.ok_ioctl(fd, uapi.IOMMU_IOAS_ALLOC, "iommu_ioas_alloc")
            if rc == 0:
                self.ioas.append((fd, c.out_ioas_id))
        elif step == 1 and self.ioas:
            fd, ioas = r.choice(self.ioas)
            if r.random() < 0.25:
                # 2 MiB-aligned memory at a 2 MiB-aligned IOVA: huge leaves,
                # which partial unmaps and DMA across their edges split.
                va, n = self.mem.huge, r.choice((HUGE, 2 * HUGE, HUGE + PAGE))
                iova = r.choice((HUGE, 1 << 30, r.getrandbits(10) * HUGE))
            else:
                off = r.randrange(0, 16) * PAGE
                n = r.choice((PAGE, 2 * PAGE, self.mem.ram_len - off))
                va, n = self.mem.ram + off, min(n, self.mem.ram_len - off)
                iova = r.choice((0, 1 << 24, r.getrandbits(20) << 12, (1 << 48) - n))
            # Without FIXED_IOVA the IOAS picks the IOVA (cext/holes.c).
            flags = r.choice((7, 7, 6))
            rc, c = self.ok_ioctl(fd, uapi.IOMMU_IOAS_MAP, "iommu_ioas_map", flags=flags,
                                  ioas_id=ioas, user_va=va, length=n, iova=iova)
            if rc == 0:
                self.maps = (self.maps + [(fd, ioas, c.iova, n)])[-32:]
        elif step == 10 and self.ioas:
            self.shape_ioas()
        elif step == 11:
            self.grow_group()
        elif step == 2 and iommus:
            vfios = [fd for fd in self.of_kind("vfio") if not self.fds[fd].get("bound")]
            if vfios:
                vfd = r.choice(vfios)
                ifd = r.choice(iommus)
                rc, c = self.ok_ioctl(vfd, uapi.VFIO_DEVICE_BIND_IOMMUFD, "vfio_device_bind_iommufd",
                                      iommufd=ifd)
                if rc == 0:
                    self.fds[vfd]["bound"] = True
                    self.dev_ids.append((vfd, c.out_devid, ifd))
        elif step == 3 and self.dev_ids:
            vfd, dev_id, ifd = r.choice(self.dev_ids)
            pts = [i for f, i in self.ioas + self.hwpts if f == ifd]
            if pts:
                pt = r.choice(pts)
                rc, c = self.ok_ioctl(vfd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                                      "vfio_device_attach_iommufd_pt", pt_id=pt)
                if rc == 0:
                    self.attached[vfd] = (self.fds[vfd]["dev"], ifd, self.pt_ioas.get((ifd, pt), pt))
        elif step == 4 and iommus:
            fd = r.choice(iommus)
            rc, c = self.ok_ioctl(fd, uapi.IOMMU_FAULT_QUEUE_ALLOC, "iommu_fault_alloc")
            if rc == 0:
                self.fault_ids.append((fd, c.out_fault_id))
                self.returned(fd, ffi.cast("int32_t", c.out_fault_fd))
        elif step == 5 and self.dev_ids:
            vfd, dev_id, ifd = r.choice(self.dev_ids)
            ioases = [i for f, i in self.ioas if f == ifd]
            faults = [i for f, i in self.fault_ids if f == ifd]
            if ioases:
                flags = 0
                fault_id = 0
                if faults and r.random() < 0.7:
                    flags, fault_id = uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, r.choice(faults)
                rc, c = self.ok_ioctl(ifd, uapi.IOMMU_HWPT_ALLOC, "iommu_hwpt_alloc", flags=flags,
                                      dev_id=dev_id, pt_id=r.choice(ioases), fault_id=fault_id)
                if rc == 0:
                    self.hwpts.append((ifd, c.out_hwpt_id))
                    self.pt_ioas[(ifd, c.out_hwpt_id)] = self.pt_ioas.get((ifd, c.pt_id), c.pt_id)
        elif step == 6 and self.ioas:
            fd, ioas = r.choice(self.ioas)
            rc, c = self.ok_ioctl(fd, uapi.IOMMU_TEST_CMD, "iommu_test_cmd",
                                  op=uapi.IOMMU_TEST_OP_CREATE_ACCESS, id=ioas,
                                  create_access={"flags": r.choice((0, 1))})
            if rc == 0:
                self.returned(fd, ffi.cast("int32_t", c.create_access.out_access_fd))
        elif step == 7 and self.ioas:
            fd, ioas = r.choice(self.ioas)
            rc, c = self.ok_ioctl(fd, uapi.IOMMU_TEST_CMD, "iommu_test_cmd",
                                  op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas)
            if rc == 0:
                self.hwpts.append((fd, c.mock_domain.out_hwpt_id))
        elif step == 8:
            drivers = self.of_kind("driver")
            if drivers:
                fd = r.choice(drivers)
                if r.random() < 0.5:
                    self.ok_ioctl(fd, uapi.IOMMUFS_PASID_ALLOC, "iommufs_pasid")
                else:
                    rc, c = self.ok_ioctl(fd, uapi.IOMMUFS_SVA_BIND, "iommufs_sva_bind", pid=0)
                    if rc == 0:
                        self.bonds = (self.bonds + [(fd, self.fds[fd]["dev"], c.out_pasid)])[-8:]
        elif step == 9:
            dmas = self.of_kind("dma")
            # A device attached to an IOAS with a mapping: DMA that translates.
            reach = [(dev, iova, n) for dev, ifd, ioas in self.attached.values()
                     for f, i, iova, n in self.maps if (f, i) == (ifd, ioas)]
            if self.bonds and r.random() < 0.3:
                self.sva_dma(dmas)
                return
            else:
                pasid, flags = 0, 2 if r.random() < 0.8 else 0
            if reach:
                dev, iova, length = r.choice(reach)
                fd = next((f for f in dmas if self.fds[f]["dev"] == dev), None)
                if fd is None:
                    fd = self.open(f"devices/{dev}/dma", "dma", dev=dev)
                    if fd < 0:
                        return
                op = r.choice((1, 2))
                off = r.randrange(0, length, 8)
                n = r.choice((8, PAGE, length - off, length - off + 8, 3 * PAGE))
                frame = DMA_REQ.pack(b"IODM", op, flags, pasid, (iova + off) & U64, n, 0)
                frame += bytes(n) if op == 2 else b""
                if self.call("dma", f"fd {fd} ok dma op {op} iova {iova:#x}", os.write, fd, frame) > 0:
                    rep = self.read(fd, "dma", 1 << 16)
                    if isinstance(rep, bytes) and rep[:8] == b"IODM\0\0\0\0":
                        self.reached["dma"] = self.reached.get("dma", 0) + 1

    def grow_group(self):
        """The legacy path, well formed: a group joins one of our iommufds
        or containers and hands out a device fd (a returned fd)."""
        r = self.rng
        groups = self.of_kind("group")
        if not groups:
            dev = r.choice(self.devices)
            self.open(f"vfio/{dev['group']}", "group", group=dev["group"])
            return
        gfd = r.choice(groups)
        ctxs = self.of_kind("iommu", "container")
        if ctxs and r.random() < 0.5:
            self.mem.put(self.mem.scratch + 7 * PAGE, struct.pack("<i", r.choice(ctxs)))
            self.call("group", f"fd {gfd} ok SET_CONTAINER", self.ioctl, gfd, GROUP_SET_CONTAINER,
                      self.mem.scratch + 7 * PAGE)
        members = [d for d in self.devices if d["group"] == self.fds[gfd]["group"]]
        name = r.choice(members)["name"].encode() + b"\0"
        self.mem.put(self.mem.scratch + 7 * PAGE, name)
        res = self.call("group", f"fd {gfd} ok GET_DEVICE_FD", self.ioctl, gfd, GROUP_GET_DEVICE_FD,
                        self.mem.scratch + 7 * PAGE)
        if res >= 0:
            self.reached["group device fd"] = self.reached.get("group device fd", 0) + 1
            self.returned(gfd, res if self.shimmed else -1)

    def shape_ioas(self):
        """Well-formed calls with edge values that reshape an IOAS: allowed
        ranges, reserved ranges, unmaps (partial ones split huge leaves),
        copies; the free-IOVA code (cext/holes.c) and the page tables
        (cext/pagetable.c) see every edge."""
        r = self.rng
        fd, ioas = r.choice(self.ioas)
        edges = (0, PAGE - 1, PAGE, HUGE - 1, HUGE, 1 << 24, (1 << 31) - 1, 0xFEE00000,
                 (1 << 48) - 1, 1 << 48, (1 << 63) - 1, U64 - PAGE + 1, U64 - 1, U64)
        x = r.random()
        if x < 0.3:
            n = r.choice((0, 1, 2, 3))
            pts = sorted(r.choice(edges) if r.random() < 0.7 else r.getrandbits(64) for _ in range(2 * n))
            if r.random() < 0.2:
                r.shuffle(pts)
            arr = b"".join(struct.pack("<QQ", pts[2 * i], pts[2 * i + 1]) for i in range(n))
            addr = self.mem.scratch + 5 * PAGE
            self.mem.put(addr, arr)
            self.ok_ioctl(fd, uapi.IOMMU_IOAS_ALLOW_IOVAS, "iommu_ioas_allow_iovas", ioas_id=ioas,
                          num_iovas=n, allowed_iovas=addr)
        elif x < 0.5:
            self.ok_ioctl(fd, uapi.IOMMU_TEST_CMD, "iommu_test_cmd", op=uapi.IOMMU_TEST_OP_ADD_RESERVED,
                          id=ioas, add_reserved={"start": r.choice(edges),
                                                 "length": r.choice(edges + (PAGE, HUGE))})
        elif x < 0.8:
            mine = [m for m in self.maps if m[:2] == (fd, ioas)]
            if mine and r.random() < 0.8:
                _, _, iova, n = r.choice(mine)
                start = iova + r.choice((0, PAGE, n // 2 & ~(PAGE - 1), n - PAGE))
                length = r.choice((PAGE, n, HUGE, U64 - start + 1 if start else U64))
            else:
                start, length = r.choice(((0, U64), (r.choice(edges), r.choice(edges))))
            self.ok_ioctl(fd, uapi.IOMMU_IOAS_UNMAP, "iommu_ioas_unmap", ioas_id=ioas, iova=start,
                          length=length & U64)
        else:
            others = [i for f, i in self.ioas if f == fd]
            mine = [m for m in self.maps if m[:2] == (fd, ioas)]
            if mine:
                _, _, iova, n = r.choice(mine)
                self.ok_ioctl(fd, uapi.IOMMU_IOAS_COPY, "iommu_ioas_copy", flags=r.choice((6, 7)),
                              dst_ioas_id=r.choice(others), src_ioas_id=ioas,
                              length=r.choice((n, PAGE, n + PAGE)), src_iova=iova,
                              dst_iova=r.choice((iova, 0, U64 - PAGE + 1, 1 << 47)))

    def sva_dma(self, dmas):
        """DMA through an SVA bond: at our own virtual addresses, inside the
        RAM buffer or at addresses nothing can write (a write elsewhere
        would be a device scribbling on this worker's heap, as real SVA
        allows)."""
        r = self.rng
        m = self.mem
        _, dev, pasid = r.choice(self.bonds)
        fd = next((f for f in dmas if self.fds[f]["dev"] == dev), None)
        if fd is None:
            fd = self.open(f"devices/{dev}/dma", "dma", dev=dev)
            if fd < 0:
                return
        op = r.choice((1, 2))
        if r.random() < 0.5:
            off = r.randrange(0, m.ram_len, 8)
            va, n = m.ram + off, r.choice((8, m.ram_len - off))
        else:
            va = r.choice((r.choice(LAST_PAGES), r.choice(KERNEL), r.choice(NONCANONICAL), m.hole,
                           m.none, m.ro + r.randrange(0, PAGE, 8), m.edge - 8))
            n = r.choice((8, PAGE, 3 * PAGE, U32))
            if va == m.edge - 8 and op == 2:
                n = r.choice((16, PAGE))          # the rest lies in the PROT_NONE page
        data = bytes(n) if op == 2 and n <= 4 * PAGE else b""
        frame = DMA_REQ.pack(b"IODM", op, 1 | 2, pasid, va, n, 0) + data
        if self.call("dma", f"fd {fd} sva dma op {op} pasid {pasid} va {va:#x} len {n}",
                     os.write, fd, frame) > 0:
            rep = self.read(fd, "dma", 1 << 16)
            if isinstance(rep, bytes) and rep[:8] == b"IODM\0\0\0\0":
                self.reached["sva dma"] = self.reached.get("sva dma", 0) + 1

    def open_some(self):
        r = self.rng
        dev = r.choice(self.devices)
        x = r.random()
        if x < 0.25:
            self.open("iommu", "iommu")
        elif x < 0.3:
            self.open("vfio/vfio", "container")
        elif x < 0.36:
            self.open(f"vfio/{dev['group']}", "group", group=dev["group"])
        elif x < 0.55:
            self.open(f"vfio/devices/{dev['vfio']}", "vfio", dev=dev["name"])
        elif x < 0.75:
            self.open(f"devices/{dev['name']}/dma", "dma", dev=dev["name"])
        elif x < 0.9:
            self.open(f"devices/{dev['name']}/driver", "driver", dev=dev["name"])
        else:
            self.open(f"devices/{dev['name']}/info", "info",
                      flags=os.O_RDONLY if r.random() < 0.9 else os.O_RDWR)

    def step(self):
        r = self.rng
        x = r.random()
        if not self.fds or (x < 0.08 and len(self.fds) < MAX_FDS):
            self.open_some()
        elif x < 0.11:
            fd = r.choice(list(self.fds))
            self.close(fd, sync=r.random() < 0.5 and self.fds[fd]["kind"] != "dma")
        elif x < 0.3:
            self.grow()
        elif x < 0.65:
            self.fuzz_ioctl(r.choice(list(self.fds)))
        elif x < 0.88:
            fds = [fd for fd in self.fds if self.fds[fd]["kind"] not in ("info",)] or list(self.fds)
            self.fuzz_frame(r.choice(fds))
        else:
            self.raw(r.choice(list(self.fds)))

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                self.step()
            for fd in list(self.fds):
                self.close(fd, sync=self.rng.random() < 0.5 and self.fds[fd]["kind"] != "dma")
        except SystemExit:
            pass
        return dict(worker=self.wid, calls=self.calls, by_kind=self.by_kind, errnos=self.errnos,
                    reached=self.reached, shim_fds=self.adopted, fatal=self.fatal)


# The minimum sizes (offsetofend of the last mandatory field) of the
# tables the server applies, so that "minimum - 1" and "minimum" are drawn.
def _min_sizes():
    from core.iommu import driver
    from core.iommufd import dispatch

    out = {}
    for op in list(dispatch.OPS.values()) + list(driver.DRIVER.ops.values()):
        out[op.ctype.item.cname.split()[-1]] = op.min_size
    out.update(vfio_device_bind_iommufd=16, vfio_device_attach_iommufd_pt=12,
               vfio_device_detach_iommufd_pt=8, vfio_device_info=20, vfio_iommu_type1_info=16,
               vfio_iommu_type1_dma_map=32, vfio_iommu_type1_dma_unmap=24, iommufs_fd_path=264)
    return out


_MIN = _min_sizes()


def main(argv):
    # A worker that crashes says where (its own defect, or memory the server wrote).
    faulthandler.enable()
    mnt, seed, wid, seconds, status = argv[1], argv[2], int(argv[3]), float(argv[4]), argv[5]
    w = Worker(mnt, seed, wid, seconds, status)
    res = w.run()
    print(json.dumps(res), flush=True)
    return 3 if res["fatal"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
