"""Tests of the client-memory C helpers (cext/procmem.c) that core's pin-time
check relies on, against real mappings of this process and of a child.

``iofs_pin_check`` is the pin-time rule of IOMMU_IOAS_MAP (reference §7,
Pinning): liveness of the owner, every page readable (as pinning faults them
in), and every byte in writable VMAs when the mapping is writable.
"""
import ctypes
import errno
import os
import subprocess
import sys
import tempfile

import pytest

from cext._native import lib

PAGE = 4096
PROT_NONE, PROT_R, PROT_RW = 0, 1, 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def mmap(length, prot=PROT_RW, flags=0x22, fd=-1):   # MAP_PRIVATE | MAP_ANONYMOUS
    a = _libc.mmap(None, length, prot, flags, fd, 0)
    assert a not in (None, ctypes.c_void_p(-1).value)
    return a


@pytest.fixture
def me():
    """(pidfd, pid, maps_fd) of this process, as core's Owner holds them."""
    pid = os.getpid()
    pidfd = lib.iofs_pidfd_open(pid, 0)
    maps_fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY)
    yield pidfd, pid, maps_fd
    os.close(pidfd)
    os.close(maps_fd)


@pytest.fixture
def region():
    """Four pages: RW, RW, RO, PROT_NONE (three VMAs), then an unmapped page."""
    a = mmap(5 * PAGE)
    _libc.mprotect(a + 2 * PAGE, PAGE, PROT_R)
    _libc.mprotect(a + 3 * PAGE, PAGE, PROT_NONE)
    _libc.munmap(a + 4 * PAGE, PAGE)
    yield a
    _libc.munmap(a, 4 * PAGE)


def pin(me, a, n, write):
    pidfd, pid, maps_fd = me
    return lib.iofs_pin_check(pidfd, pid, maps_fd, a, n, 1 if write else 0)


def test_readable_and_writable_pages(me, region):
    assert pin(me, region, 2 * PAGE, True) == 0
    assert pin(me, region + 100, 1, True) == 0          # any byte range, not only pages
    assert pin(me, region, 3 * PAGE, False) == 0         # RW then RO: readable
    assert pin(me, region + 2 * PAGE, PAGE, False) == 0


def test_read_only_vma_fails_only_for_write(me, region):
    assert pin(me, region, 3 * PAGE, True) == -errno.EFAULT
    assert pin(me, region + 2 * PAGE, 1, True) == -errno.EFAULT


def test_unreadable_or_unmapped_is_efault(me, region):
    assert pin(me, region + 3 * PAGE, PAGE, False) == -errno.EFAULT   # PROT_NONE
    assert pin(me, region, 4 * PAGE, False) == -errno.EFAULT
    assert pin(me, region + 4 * PAGE, PAGE, False) == -errno.EFAULT   # unmapped
    assert pin(me, region + 4 * PAGE - 1, 2, True) == -errno.EFAULT


def test_adjacent_writable_vmas_count_as_one_range(me):
    a = mmap(3 * PAGE)
    try:
        # Different protections split the VMA; making them equal again may
        # not merge it, and the check must walk across VMAs either way.
        _libc.mprotect(a + PAGE, PAGE, PROT_R)
        _libc.mprotect(a + PAGE, PAGE, PROT_RW | 4)   # + PROT_EXEC keeps it split
        assert pin(me, a, 3 * PAGE, True) == 0
    finally:
        _libc.munmap(a, 3 * PAGE)


def test_file_mapping_past_eof_is_efault(me):
    # Pinning faults the pages in: a page past the end of the file raises
    # SIGBUS in the process, and pinning it fails, though the VMA is readable.
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * PAGE)
        f.flush()
        a = mmap(2 * PAGE, PROT_R, 0x02, f.fileno())             # MAP_PRIVATE
        try:
            assert pin(me, a, PAGE, False) == 0
            assert pin(me, a, 2 * PAGE, False) == -errno.EFAULT
        finally:
            _libc.munmap(a, 2 * PAGE)


def test_without_maps_fd_writability_is_left_to_the_caller(me, region):
    pidfd, pid, _ = me
    assert lib.iofs_pin_check(pidfd, pid, -1, region, PAGE, 1) == -errno.ENOTTY
    assert lib.iofs_pin_check(pidfd, pid, -1, region, PAGE, 0) == 0
    # Readability is still checked first.
    assert lib.iofs_pin_check(pidfd, pid, -1, region + 3 * PAGE, PAGE, 1) == -errno.EFAULT


def test_zero_length_checks_only_liveness(me):
    assert pin(me, 0, 0, True) == 0
    assert lib.iofs_pin_check(-1, os.getpid(), -1, 0, 0, 0) == -errno.ESRCH


def test_exited_process_is_esrch(me):
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, mmap; m = mmap.mmap(-1, 4096); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    pidfd = lib.iofs_pidfd_open(child.pid, 0)
    maps_fd = os.open(f"/proc/{child.pid}/maps", os.O_RDONLY)
    try:
        # Some readable page of the child: its first mapping.
        with open(f"/proc/{child.pid}/maps") as f:
            lo = int(f.readline().split("-")[0], 16)
        assert lib.iofs_pin_check(pidfd, child.pid, maps_fd, lo, 1, 0) == 0
        child.stdin.close()
        child.wait()
        assert lib.iofs_pin_check(pidfd, child.pid, maps_fd, lo, 1, 0) == -errno.ESRCH
        assert lib.iofs_pin_check(pidfd, child.pid, maps_fd, lo, 0, 0) == -errno.ESRCH
    finally:
        os.close(pidfd)
        os.close(maps_fd)


def test_large_range_is_probed_in_batches(me):
    # More pages than one process_vm_readv carries (1024 iovecs).
    n = 3000 * PAGE
    a = mmap(n)
    try:
        assert pin(me, a, n, True) == 0
        _libc.mprotect(a + 2500 * PAGE, PAGE, PROT_NONE)
        assert pin(me, a, n, False) == -errno.EFAULT
        assert pin(me, a, 2500 * PAGE, True) == 0
    finally:
        _libc.munmap(a, n)
