"""Hostile-input reproductions of issue 8, through a real mount.

- Pointers in the last pages of the address space (and pointer fields that
  point there) get EFAULT, as the kernel's copy_from_user gives, and the
  server serves on.
- An fd handed to another uid (inherited across fork + setuid) can neither
  use nor tear down the owner's objects: every ioctl and frame is EACCES,
  the project-private ones included.
- A mount whose server and auto_unmount helper both died is cleaned by the
  next ``iommufs mount``, even while stat() still answers from cached
  attributes.
"""
import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, client_env, kill_pid, server_children, start_server, stop_server
from core import uapi
from devfs.client import DeviceDriver, Iommufd, VfioDevice, ffi

PLAIN = "0000:00:03.0"
PRI_DEV = "0000:00:04.0"
TOP_PAGES = (0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFF800, 0xFFFFFFFFFFFFFFF0, 0xFFFFFFFFFFFFFFF8)
NOBODY = 65534


def run_client(code, *args, timeout=60):
    """Run ``code`` in a new Python process; returns its stdout lines."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                       capture_output=True, text=True, env=client_env(), timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.split()


RAW_IOCTL = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
def raw(fd, cmd, addr):
    r = libc.ioctl(fd, cmd, ctypes.c_void_p(addr))
    return r if r >= 0 else -ctypes.get_errno()
"""


def test_pointers_in_the_last_page_get_efault(mount):
    out = run_client(RAW_IOCTL + """
mnt = sys.argv[1]
fd = os.open(mnt + "/iommu", os.O_RDWR)
drv = os.open(mnt + "/devices/0000:00:04.0/driver", os.O_RDWR)
for addr in (0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFF800, 0xFFFFFFFFFFFFFFF0,
             0xFFFFFFFFFFFFFFF8, 0xFFFF800000000000, 0x0000800000000000 - 4):
    print(raw(fd, 0x3b81, addr), raw(drv, 0xF510, addr))
""", mount.path)
    assert out == [str(-errno.EFAULT)] * 12
    assert mount.proc.poll() is None, mount.log_text()


@pytest.mark.parametrize("addr", TOP_PAGES)
def test_pointer_fields_in_the_last_page_get_efault(mount, addr):
    with Iommufd(mount.path) as fd:
        ioas = fd.ioas_alloc()
        allow = ffi.new("struct iommu_ioas_allow_iovas *",
                        {"size": ffi.sizeof("struct iommu_ioas_allow_iovas"),
                         "ioas_id": ioas, "num_iovas": 1, "allowed_iovas": addr})
        with pytest.raises(OSError) as e:
            fd.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, allow)
        assert e.value.errno == errno.EFAULT
        ranges = ffi.new("struct iommu_ioas_iova_ranges *",
                         {"size": ffi.sizeof("struct iommu_ioas_iova_ranges"),
                          "ioas_id": ioas, "num_iovas": 4, "allowed_iovas": addr})
        with pytest.raises(OSError) as e:
            fd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, ranges)
        assert e.value.errno == errno.EFAULT
        # MAP pins (and so reads) user_va only into a domain: attach one.
        with VfioDevice(mount.path, PLAIN) as dev:
            dev.bind(fd)
            dev.attach(ioas)
            mp = ffi.new("struct iommu_ioas_map *",
                         {"size": ffi.sizeof("struct iommu_ioas_map"), "ioas_id": ioas,
                          "flags": uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_FIXED_IOVA,
                          "user_va": (addr & ~0xFFF) - 4096, "length": 4096, "iova": 0x100000})
            with pytest.raises(OSError) as e:
                fd.ioctl(uapi.IOMMU_IOAS_MAP, mp)
            assert e.value.errno == errno.EFAULT
            # user_va + length reaching 2^64 is the kernel's check_add_overflow
            # in iopt_alloc_pages: EOVERFLOW before any page is touched.
            mp.user_va = addr & ~0xFFF
            with pytest.raises(OSError) as e:
                fd.ioctl(uapi.IOMMU_IOAS_MAP, mp)
            assert e.value.errno == errno.EOVERFLOW
            dev.detach()
        # Nothing was half-done: the IOAS is still empty and unrestricted.
        assert fd.iova_ranges(ioas)[0] == [(0, 2**64 - 1)]
        assert fd.ioas_unmap(ioas, 0, 2**64 - 1) == 0     # unmap-all: 0 bytes were mapped
    assert mount.proc.poll() is None, mount.log_text()


def _as_other_uid(fn):
    """Run ``fn()`` in a forked child that has dropped to uid/gid 65534;
    returns what it returned (a JSON-able value)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = json.dumps(fn()).encode()
            os.write(w, out)
            os._exit(0)
        except BaseException as e:   # noqa: BLE001 - report anything to the parent
            os.write(w, json.dumps({"child error": repr(e)}).encode())
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return json.loads(data)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def _errno_of_ioctl(fd, cmd, arg=None):
    r = _libc.ioctl(fd, cmd, arg)
    return r if r >= 0 else -ctypes.get_errno()


def _errno_of_frame(fd, cmd, arg=b""):
    try:
        os.write(fd, struct.pack("<4sIII", b"IOFS", cmd, len(arg), 0) + arg)
        rep = os.read(fd, 4096)
    except OSError as e:
        return -e.errno
    return struct.unpack_from("<i", rep, 4)[0]


PRIVATE = (uapi.IOMMUFS_SYNC_CLOSE, uapi.IOMMUFS_FD_PATH, uapi.IOMMUFS_WHOAMI)


def _private_from_other_uid(fd, frames=True):
    """Every private ioctl on ``fd`` from uid 65534, and frame cmd 0 (close)."""
    def attempt():
        buf = ctypes.create_string_buffer(264)
        struct.pack_into("<I", buf, 0, 264)
        out = {hex(c): _errno_of_ioctl(fd, c, ctypes.addressof(buf)) for c in PRIVATE}
        if frames:
            out["frame0"] = _errno_of_frame(fd, 0)
            out["frame_sync_close"] = _errno_of_frame(fd, uapi.IOMMUFS_SYNC_CLOSE)
        return out
    return _as_other_uid(attempt)


def test_other_uid_cannot_close_a_context(mount):
    with Iommufd(mount.path) as fd:
        ioas = fd.ioas_alloc()
        got = _private_from_other_uid(fd.fd)
        assert set(got.values()) == {-errno.EACCES}, got
        # The owner's context and its IOAS are untouched.
        assert fd.iova_ranges(ioas)
        fd.destroy(ioas)


def test_other_uid_cannot_unbind_a_device(mount):
    with Iommufd(mount.path) as fd, VfioDevice(mount.path, PLAIN) as dev:
        dev_id = dev.bind(fd)
        ioas = fd.ioas_alloc()
        got = _private_from_other_uid(dev.fd)
        assert set(got.values()) == {-errno.EACCES}, got
        dev.attach(ioas)
        info = json.load(open(f"{mount.path}/devices/{PLAIN}/info"))
        assert info["dev_id"] == dev_id and info["attached"] == {"rid": ioas + 1}, info
        dev.detach()


def test_other_uid_cannot_close_a_fault_fd(mount):
    with Iommufd(mount.path) as fd:
        fault_id, fq = fd.fault_queue_alloc()
        try:
            got = _private_from_other_uid(fq.fd, frames=False)
            # A fault fd has no ioctls but the transport's close and null:
            # the others are ENOTTY for anyone, as the kernel's fault fd.
            assert got == {hex(uapi.IOMMUFS_SYNC_CLOSE): -errno.EACCES,
                           hex(uapi.IOMMUFS_FD_PATH): -errno.ENOTTY,
                           hex(uapi.IOMMUFS_WHOAMI): -errno.ENOTTY}, got
            # Still open: the FAULT object is busy while its fd lives.
            with pytest.raises(OSError) as e:
                fd.destroy(fault_id)
            assert e.value.errno == errno.EBUSY
            assert _errno_of_ioctl(fq.fd, uapi.IOMMUFS_NULL) == 0
        finally:
            fq.close()
        fd.destroy(fault_id)


def test_other_uid_cannot_free_a_drivers_pasid(mount):
    with DeviceDriver(mount.path, "0000:00:05.0") as drv:
        pasid = drv.pasid_alloc()
        got = _private_from_other_uid(drv.fd)
        assert set(got.values()) == {-errno.EACCES}, got

        def free():
            arg = ctypes.c_uint32(pasid)
            return _errno_of_ioctl(drv.fd, uapi.IOMMUFS_PASID_FREE, ctypes.addressof(arg))
        assert _as_other_uid(free) == -errno.EACCES
        drv.pasid_free(pasid)


def test_dead_mount_with_cached_attributes_is_remounted():
    m = start_server()
    path = m.path
    try:
        helpers = server_children(m.pid, "fusermount3")
        assert helpers, "no auto_unmount helper"
        os.stat(path)          # the root's attributes are now in the kernel's cache
        for pid in helpers:
            kill_pid(pid)
        kill_pid(m.pid)
        m.proc.wait(timeout=10)
        assert m.mounted()
        r = subprocess.run([sys.executable, "-m", "devfs.cli", "mount", path],
                           capture_output=True, text=True, env=client_env(), cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        with Iommufd(path) as fd:
            assert fd.ioas_alloc() == 1
    finally:
        subprocess.run([sys.executable, "-m", "devfs.cli", "umount", path],
                       capture_output=True, env=client_env(), cwd=ROOT)
        stop_server(m)
