"""The one module through which core touches client memory (DESIGN.md, layers).

- :class:`ProcessMemory`: copy_from_user / copy_to_user for one calling thread
  (``process_vm_readv/writev`` on its tid: the kernel resolves a tid to the
  thread's mm, so a request is served against the memory of the exact process
  that made it, also after a fork).
- :class:`Owner`: the process that made a mapping, held by a pidfd so that a
  reused pid never receives another process's DMA.
- :class:`MemArg` / :class:`FrameArg`: the ioctl argument, either a pointer in
  the caller (real ioctl()) or the bytes of a request frame (DESIGN.md, wire
  protocol: bytes past ``arg_len`` are unreadable memory).

Failures raise :class:`core.errors.UapiError` with EFAULT, as the kernel's
copy_from_user/copy_to_user would.
"""
import errno
import os

from cext._native import ffi, lib

from ..errors import UapiError


class ProcessMemory:
    """Memory of the process behind thread ``tid``.

    ``read(addr, n) -> bytes`` and ``write(addr, data)``: addresses are virtual
    addresses in that process, lengths in bytes. Any failure (unmapped,
    unwritable, process gone) raises UapiError(EFAULT).
    """

    __slots__ = ("pid",)

    def __init__(self, pid):
        self.pid = pid

    def read(self, addr, n):
        if n == 0:
            return b""
        if addr < 0 or addr + n > (1 << 64):
            raise UapiError(errno.EFAULT, "address out of range")
        buf = ffi.new("char[]", n)
        r = lib.iofs_vm_read(self.pid, addr, buf, n)
        if r < 0:
            raise UapiError(errno.EFAULT, f"read {n} bytes at {addr:#x} in {self.pid}: {-r}")
        return ffi.buffer(buf, n)[:]

    def read_into(self, addr, cbuf, n):
        """Copy the readable leading part of [addr, addr+n) (n < 60 KiB) into
        ``cbuf`` (a cffi pointer to at least n bytes); returns its length
        (0..n). Never raises: the caller decides which shortfall is EFAULT."""
        if addr < 0 or addr + n > (1 << 64):
            return 0
        r = lib.iofs_vm_read_upto(self.pid, addr, cbuf, n)
        return r if r > 0 else 0

    def write(self, addr, data):
        n = len(data)
        if n == 0:
            return
        if addr < 0 or addr + n > (1 << 64):
            raise UapiError(errno.EFAULT, "address out of range")
        r = lib.iofs_vm_write(self.pid, addr, ffi.from_buffer(data), n)
        if r < 0:
            raise UapiError(errno.EFAULT, f"write {n} bytes at {addr:#x} in {self.pid}: {-r}")

    def write_from(self, addr, cdata, n):
        """Write the first ``n`` bytes of the cffi object ``cdata`` at
        ``addr`` (no intermediate bytes object); EFAULT as :meth:`write`."""
        if n == 0:
            return
        if addr < 0 or addr + n > (1 << 64):
            raise UapiError(errno.EFAULT, "address out of range")
        r = lib.iofs_vm_write(self.pid, addr, cdata, n)
        if r < 0:
            raise UapiError(errno.EFAULT, f"write {n} bytes at {addr:#x} in {self.pid}: {-r}")

    def probe(self, addr, length, page_size=4096):
        """Raise EFAULT unless every page of [addr, addr+length) is readable."""
        if length and lib.iofs_vm_probe(self.pid, addr, length, page_size) < 0:
            raise UapiError(errno.EFAULT, f"range {addr:#x}+{length:#x} not readable")


_tgid_cache = {}


def tgid_of(tid):
    """The thread-group id (process id) of thread ``tid``.

    Read from /proc once per thread (about 30 µs), then answered from a cache
    that a tgkill(tgid, tid, 0) probe (about 1 µs) re-validates on every use,
    so a tid reused by another process is never mistaken for the old one.
    Raises UapiError(ESRCH) when the thread is gone.
    """
    cached = _tgid_cache.get(tid)
    if cached is not None and lib.iofs_tgkill0(cached, tid) == 0:
        return cached
    if len(_tgid_cache) > 4096:
        _tgid_cache.clear()
    tgid = _tgid_from_proc(tid)
    _tgid_cache[tid] = tgid
    return tgid


def uid_of(pid):
    """The real uid of process ``pid`` (from /proc). Raises
    UapiError(ESRCH) when there is no such process."""
    return _status_field(pid, b"Uid:", f"no process {pid}")


def _tgid_from_proc(tid):
    return _status_field(tid, b"Tgid:", f"thread {tid} is gone")


def _status_field(pid, key, gone):
    # The first number after ``key`` in /proc/<pid>/status; ESRCH (``gone``)
    # when the task is no more.
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    raise UapiError(errno.ESRCH, gone)


class Owner:
    """A client process that owns mappings: its tgid, uid and a pidfd on it.

    The pidfd guards against pid reuse: every access checks, after the copy,
    that the process has not exited, so bytes never move to or from a process
    that merely inherited the pid. ``close()`` releases the pidfd; owners are
    shared by reference count (``get``/``put``) between areas.
    """

    def __init__(self, tgid, uid):
        fd = lib.iofs_pidfd_open(tgid, 0)
        if fd < 0:
            raise UapiError(errno.ESRCH, f"pidfd_open({tgid}) = {-fd}")
        self.tgid = tgid
        self.uid = uid
        self.pidfd = fd
        self.mem = ProcessMemory(tgid)
        self.refs = 0
        try:
            # Held open: PROCMAP_QUERY on it answers pin-time checks in ~1 µs,
            # and it stays bound to this process even if the pid is reused.
            self.maps_fd = os.open(f"/proc/{tgid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.maps_fd = -1

    def alive(self):
        """True while the process has not exited."""
        return self.pidfd >= 0 and lib.iofs_pidfd_exited(self.pidfd) == 0

    def rw_segments(self, segs, nsegs, local, write):
        """Move bytes between ``local`` (a cffi buffer of the segments' total
        length) and the owner's memory at ``segs`` (``struct iofs_seg[]``).

        Returns bytes moved (may be short at the first unmapped or read-only
        page); raises UapiError(EFAULT) if the process is gone.
        """
        if not self.alive():
            raise UapiError(errno.EFAULT, f"owner {self.tgid} has exited")
        n = lib.iofs_vm_rw_segs(self.tgid, segs, nsegs, local, 1 if write else 0)
        if not self.alive():
            # The pid may have been reused during the copy: trust nothing.
            raise UapiError(errno.EFAULT, f"owner {self.tgid} exited during DMA")
        return max(n, 0)

    def vma_access(self, addr, length, write):
        """How a device walking this process's CPU page tables (SVA) fares
        on [addr, addr+length): 0 if every byte is mapped readable (and
        writable for ``write``); -EFAULT if some byte is unmapped or
        unreadable, or the process has exited; -EACCES if all is readable
        but a byte is not writable."""
        if not self.alive():
            return -errno.EFAULT
        if self.maps_fd < 0:
            return -errno.EFAULT
        rc = lib.iofs_vma_check(self.maps_fd, addr, length, 0)
        if rc < 0:
            return -errno.EFAULT
        if write and lib.iofs_vma_check(self.maps_fd, addr, length, 1) < 0:
            return -errno.EACCES
        return 0

    def close(self):
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.maps_fd >= 0:
            os.close(self.maps_fd)
            self.maps_fd = -1


class MemArg:
    """An ioctl argument at ``addr`` in the caller's memory (real ioctl())."""

    __slots__ = ("mem", "addr")

    def __init__(self, mem, addr):
        self.mem = mem
        self.addr = addr

    def read(self, off, n):
        return self.mem.read(self.addr + off, n)

    def read_into(self, off, cbuf, n):
        """Copy the readable leading part of the n bytes at ``off`` into the
        cffi buffer ``cbuf``; returns how many bytes that is (may be short)."""
        return self.mem.read_into(self.addr + off, cbuf, n)

    def write(self, off, data):
        self.mem.write(self.addr + off, data)

    def write_from(self, off, cdata, n):
        """Write the first ``n`` bytes of the cffi object ``cdata`` at ``off``."""
        self.mem.write_from(self.addr + off, cdata, n)

    def integer(self):
        """The argument as an integer (``unsigned long``), for ioctls that
        take a value rather than a pointer (VFIO_CHECK_EXTENSION): the
        pointer itself, never dereferenced."""
        return self.addr


class FrameArg:
    """An ioctl argument carried in a request frame.

    Reads past the sent bytes fault (EFAULT); writes land in ``self.buf``,
    which becomes the argument part of the reply frame (DESIGN.md, frames).
    """

    __slots__ = ("buf",)

    def __init__(self, data):
        self.buf = bytearray(data)

    def read(self, off, n):
        if off + n > len(self.buf):
            raise UapiError(errno.EFAULT, "read past the frame's argument")
        return bytes(self.buf[off:off + n])

    def read_into(self, off, cbuf, n):
        data = self.buf[off:off + n]
        ffi.memmove(cbuf, data, len(data))
        return len(data)

    def write(self, off, data):
        if off + len(data) > len(self.buf):
            raise UapiError(errno.EFAULT, "write past the frame's argument")
        self.buf[off:off + len(data)] = data

    def write_from(self, off, cdata, n):
        self.write(off, ffi.buffer(cdata, n))

    def integer(self):
        """The argument as an integer (``unsigned long``): the frame carries it
        in 8 little-endian bytes (DESIGN.md, frames); fewer bytes are
        zero-extended, as nothing is dereferenced to read a value."""
        return int.from_bytes(bytes(self.buf[:8]), "little")


def check_access(owner, addr, length, write):
    """Pin-time check of [addr, addr+length) in the process of ``owner`` (an
    :class:`Owner`): every page must be mapped and readable, and writable
    when ``write`` (the kernel pins with FOLL_WRITE for
    IOMMU_IOAS_MAP_WRITEABLE; reference §7, "Pinning").

    Readability is probed with process_vm_readv (which also faults the pages
    in, like pinning). Writability is read from the VMAs (PROCMAP_QUERY on
    the owner's held /proc/<pid>/maps, or its text on older kernels) rather
    than tested by writing, so the client's bytes are never touched.
    Raises UapiError(EFAULT), also when the process has exited.
    """
    if length == 0:
        return
    rc = lib.iofs_pin_check(owner.pidfd, owner.tgid, owner.maps_fd, addr, length,
                            1 if write else 0)
    if rc == 0:
        return
    if rc == -errno.ENOTTY:
        _check_writable_by_text(owner.tgid, addr, length)
        return
    if rc == -errno.ESRCH:
        raise UapiError(errno.EFAULT, f"owner {owner.tgid} has exited")
    raise UapiError(errno.EFAULT, f"{addr:#x}+{length:#x} not readable or not writable "
                                  f"in {owner.tgid}")


def _check_writable_by_text(pid, addr, length):
    # For kernels without PROCMAP_QUERY (before 6.11): parse the whole text.
    end = addr + length
    need = addr
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                span, perms = line.split(b" ", 2)[:2]
                lo, hi = (int(x, 16) for x in span.split(b"-"))
                if hi <= need:
                    continue
                if lo > need or perms[1:2] != b"w":
                    break
                need = hi
                if need >= end:
                    return
    except OSError:
        pass
    raise UapiError(errno.EFAULT, f"{addr:#x}+{length:#x} not writable in {pid}")


class OwnerTable:
    """The owners of one context's mappings, one :class:`Owner` per live process.

    ``hold(caller) -> Owner`` takes a reference for a new area (reusing the
    owner of the caller's process while it lives); ``release(owner)`` drops
    it and closes the pidfd with the last reference.
    """

    def __init__(self):
        self.by_tgid = {}

    def hold(self, caller):
        tgid = caller.tgid
        owner = self.by_tgid.get(tgid)
        if owner is None or not owner.alive():
            owner = Owner(tgid, caller.uid)
            self.by_tgid[tgid] = owner
        owner.refs += 1
        return owner

    def share(self, owner):
        """Another reference on an existing owner (IOAS_COPY shares pages)."""
        owner.refs += 1
        return owner

    def release(self, owner):
        owner.refs -= 1
        if owner.refs == 0:
            owner.close()
            if self.by_tgid.get(owner.tgid) is owner:
                del self.by_tgid[owner.tgid]

    def __len__(self):
        return len(self.by_tgid)
