"""File memory for IOMMU_IOAS_MAP_FILE (reference §7): the server's own
shared mapping of the caller's file, and where a process maps that file.

The kernel pins the file's pages (memfd_pin_folios), so they stay valid
whatever the caller does with its own view of them afterwards. The emulator
does the same by mapping the pages itself (MAP_SHARED of the duplicate of
the caller's fd): the areas of a MAP_FILE are memory of the server's own
process, and device DMA reaches the file through that mapping. The file is
known by (st_dev, st_ino); a client's view of the same pages is found in
its /proc/PID/maps, which is how MD_CHECK_MAP and MD_CHECK_REFS compare
file pages with the caller's memory, as the kernel compares struct pages.
"""
import ctypes
import errno
import mmap
import os
import weakref

from cext._native import ffi, lib

from ..errors import UapiError
from .iova import PAGE_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)

# Filesystems whose pages memfd_pin_folios can pin: shmem (memfds, tmpfs)
# and hugetlbfs; any other file is EINVAL in the kernel.
TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6
_MAP_FAILED = ctypes.c_void_p(-1).value


def fs_type(fd):
    """statfs f_type of the file open at ``fd`` (0 if unknown)."""
    buf = ctypes.create_string_buffer(128)
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], "little")


class FileMapping:
    """The server's MAP_SHARED view of ``[start, start+length)`` of the file
    open at ``fd`` (bytes; mapped from the page below ``start``). ``va(off)``
    is the server address of file offset ``off``; ``dev``/``ino`` name the
    file. Unmapped when the object goes."""

    def __init__(self, fd, start, length, writable):
        st = os.fstat(fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        self.off0 = start - start % PAGE_SIZE
        span = start + length - self.off0
        self.size = span + (-span % PAGE_SIZE)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        addr = _libc.mmap(None, self.size, prot, mmap.MAP_SHARED, fd, self.off0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno() or errno.ENOMEM
            raise UapiError(errno.EPERM if err == errno.EACCES else err, f"mmap of the file: {err}")
        self.base = addr
        self._unmap = weakref.finalize(self, _libc.munmap, addr, self.size)

    def va(self, off):
        return self.base + off - self.off0

    def offset(self, va):
        """The file offset the server address ``va`` maps."""
        return va - self.base + self.off0


def file_views(tgid, start, end):
    """The shared file mappings of process ``tgid`` meeting VAs ``[start,
    end)``: ``[(lo, hi, dev, ino, offset_of_lo)]`` (VA runs, st_dev as
    os.makedev, byte offset). Empty if the maps cannot be read."""
    out = []
    try:
        with open(f"/proc/{tgid}/maps", "rb") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 5:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split(b"-"))
                if hi <= start or lo >= end or parts[1][3:4] != b"s":
                    continue
                ino = int(parts[4])
                if not ino:
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(b":"))
                out.append((lo, hi, os.makedev(major, minor), ino, int(parts[2], 16)))
    except OSError:
        pass
    return out


def view_of(views, va):
    """(dev, ino, offset) the process maps at ``va`` according to
    ``views`` (from :func:`file_views`), or None."""
    for lo, hi, dev, ino, off in views:
        if lo <= va < hi:
            return dev, ino, off + va - lo
    return None


class DmaBuf:
    """The memory of a dma-buf the emulator exports (the selftest's mock
    dma-buf): ``size`` bytes of a memfd of this process, ``fd``, and
    ``revoked`` (its importers lose access: MAP_FILE then answers ENODEV).
    The memfd closes with the object."""

    def __init__(self, size):
        self.size = size
        self.revoked = False
        self.fd = os.memfd_create("iommufs-dmabuf", os.MFD_CLOEXEC)
        self._close = weakref.finalize(self, os.close, self.fd)
        os.ftruncate(self.fd, size)


class Held:
    """A hold on the shmem or file object behind a MAP_SHARED mapping of a
    client (an fd opened through /proc/PID/map_files while the client
    lives): ``fd``, and ``offset`` the object offset of the client address
    ``va``. Pinned pages outlive their process in the kernel; this is what
    lets the emulator do the same for shared memory (issue 11, fork_gone).
    Private anonymous memory has no such object: once its process is gone
    it is gone, and only ptrace-ing the client could keep it."""

    def __init__(self, fd, va, offset, writable):
        self.fd = fd
        self.va = va
        self.offset = offset
        self.writable = writable
        self._close = weakref.finalize(self, os.close, fd)

    def offset_of(self, va):
        return self.offset + va - self.va


def hold_shared(owner, va, length, writable):
    """A :class:`Held` for ``[va, va+length)`` of ``owner``'s process (a
    core.mm.usermem.Owner) when one MAP_SHARED mapping of an object with an
    inode covers it, else None (also when /proc/PID/map_files cannot be
    opened: it needs CAP_SYS_ADMIN, which a server running as root has)."""
    vma = _vma_at(owner, va)
    if vma is None:
        return None
    lo, hi, shared, inode, offset = vma
    if va + length > hi or not shared or not inode:
        return None
    path = f"/proc/{owner.tgid}/map_files/{lo:x}-{hi:x}"
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError:
        return None
    return Held(fd, va, offset + va - lo, writable)


_VMA_SHARED = 8      # PROCMAP_QUERY_VMA_SHARED


def _vma_at(owner, va):
    # (start, end, shared, inode, file offset) of the VMA covering ``va``:
    # one PROCMAP_QUERY on the owner's held maps fd (about 1 µs; reading
    # the text of /proc/PID/maps costs a hundred times that on a map of a
    # VMM's memory), the text on kernels without the ioctl.
    if owner.maps_fd >= 0:
        out = ffi.new("struct iofs_vma *")
        r = lib.iofs_vma_query(owner.maps_fd, va, out)
        if r == 0:
            return out.start, out.end, bool(out.flags & _VMA_SHARED), out.inode, out.offset
        if r != -errno.ENOTTY:
            return None
    try:
        with open(f"/proc/{owner.tgid}/maps", "rb") as f:
            for line in f:
                parts = line.split(None, 5)
                lo, hi = (int(x, 16) for x in parts[0].split(b"-"))
                if lo <= va < hi:
                    return lo, hi, parts[1][3:4] == b"s", int(parts[4]), int(parts[2], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None
    return None
