"""The legacy VFIO group/container API (vfio-device.md §10) through a real
mount, from a program run under ``iommufs run`` (its /dev/vfio/vfio and
/dev/vfio/N, the sysfs iommu_group link, the shim turning GET_DEVICE_FD's
answer into a real fd), with the kernel's errnos; a device fd from the group
drives the dma-engine, whose DMA lands in the program's own buffer through
the container's type1 mapping."""
import json
import sys
import textwrap

from test_run import iommufs_run

PROGRAM = r'''
import ctypes, errno, json, mmap, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
def io(fd, cmd, arg=None):
    r = libc.ioctl(fd, cmd, arg)
    return r if r >= 0 else -ctypes.get_errno()
def ptr(b):
    return ctypes.addressof(b)
B = ord(";") << 8
GET_API, CHECK_EXT, SET_IOMMU = B | 100, B | 101, B | 102
G_STATUS, G_SET, G_UNSET, G_GETFD = B | 103, B | 104, B | 105, B | 106
DEV_INFO, MAP_DMA, BIND, ATTACH = B | 107, B | 113, B | 118, B | 119
out = {}
bdf = "01f5:01:00.0"                        # the bridge pair: one group of two
group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group"))
out["group"] = group
cont = os.open("/dev/vfio/vfio", os.O_RDWR)
out["api"], out["ext_type1v2"] = io(cont, GET_API), io(cont, CHECK_EXT, 3)
g = os.open(f"/dev/vfio/{group}", os.O_RDWR)
try:
    os.open(f"/dev/vfio/{group}", os.O_RDWR)
    out["second_open"] = 0
except OSError as e:
    out["second_open"] = -e.errno
# The cdev and the group node exclude each other.
cdev = os.open("/dev/vfio/devices/vfio3", os.O_RDWR)
bind = ctypes.create_string_buffer(struct.pack("<IIiIQ", 24, 0, cont, 0, 0))
out["cdev_bind_while_group_open"] = io(cdev, BIND, ptr(bind))
os.close(cdev)
st = ctypes.create_string_buffer(struct.pack("<II", 4, 0))
out["status_argsz4"] = io(g, G_STATUS, ptr(st))
st = ctypes.create_string_buffer(struct.pack("<II", 8, 0))
io(g, G_STATUS, ptr(st))
out["flags_before"] = struct.unpack("<II", st.raw[:8])[1]
name = ctypes.create_string_buffer(b"0000:01:00.0")
out["getfd_without_container"] = io(g, G_GETFD, ptr(name))
out["set_iommu_without_group"] = io(cont, SET_IOMMU, 3)
out["set_container_minus1"] = io(g, G_SET, ptr(ctypes.c_int32(-1)))
null = os.open("/dev/null", os.O_RDWR)
out["set_container_not_iommufd"] = io(g, G_SET, ptr(ctypes.c_int32(null)))
out["set_container"] = io(g, G_SET, ptr(ctypes.c_int32(cont)))
out["set_container_again"] = io(g, G_SET, ptr(ctypes.c_int32(cont)))
io(g, G_STATUS, ptr(st))
out["flags_after"] = struct.unpack("<II", st.raw[:8])[1]
out["set_iommu"] = io(cont, SET_IOMMU, 3)
dev = io(g, G_GETFD, ptr(name))
out["devfd_is_fd"] = dev > 2 and os.fstat(dev) is not None
out["getfd_unknown"] = io(g, G_GETFD, ptr(ctypes.create_string_buffer(b"0000:00:03.0")))
out["getfd_name_unreadable"] = io(g, G_GETFD, 0x10)
page = mmap.mmap(-1, 8192)
page[:] = b"x" * 8192                       # no NUL within a page: the kernel's strndup_user
out["getfd_name_too_long"] = io(g, G_GETFD, ctypes.addressof(ctypes.c_char.from_buffer(page)))
info = ctypes.create_string_buffer(struct.pack("<IIIIII", 24, 0, 0, 0, 0, 0))
io(dev, DEV_INFO, ptr(info))
out["info"] = list(struct.unpack("<IIIIII", info.raw[:24]))
out["bind_on_group_fd"] = io(dev, BIND, ptr(bind))
att = ctypes.create_string_buffer(struct.pack("<IIII", 16, 0, 1, 0))
out["attach_on_group_fd"] = io(dev, ATTACH, ptr(att))
buf = mmap.mmap(-1, 1 << 16)
va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
m = ctypes.create_string_buffer(struct.pack("<IIQQQ", 32, 3, va, 0x100000, 1 << 16))
out["map_dma"] = io(cont, MAP_DMA, ptr(m))
os.pwrite(dev, struct.pack("<H", 0x6), (7 << 40) | 4)     # COMMAND: memory + bus master
for off, v in ((0x10, 0x100000), (0x14, 0), (0x18, 4096), (0x1C, 1), (0x20, 0x5A5A5A5A), (0x2C, 1)):
    os.pwrite(dev, struct.pack("<I", v), off)
out["engine_status"] = list(struct.unpack("<II", os.pread(dev, 8, 0x30)))
out["filled"] = buf[:4096] == b"\x5a" * 4096 and buf[4096:8192] == bytes(4096)
out["unset_with_device_open"] = io(g, G_UNSET)
os.close(dev)
out["unset"] = io(g, G_UNSET)
out["unset_again"] = io(g, G_UNSET)
os.close(g)
cdev = os.open("/dev/vfio/devices/vfio3", os.O_RDWR)
out["cdev_bind_after_group_closed"] = io(cdev, BIND, ptr(bind))
print(json.dumps(out))
'''


def test_group_container_and_device_fd(mount):
    p = iommufs_run(sys.executable, "-c",
                    textwrap.dedent(PROGRAM), mount=mount.path)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    EBUSY, EINVAL, ENODEV, EBADFD, ENOTTY = 16, 22, 19, 77, 25
    assert out == {
        "group": out["group"], "api": 0, "ext_type1v2": 1,
        "second_open": -EBUSY, "cdev_bind_while_group_open": -EBUSY,
        "status_argsz4": -EINVAL, "flags_before": 1,                 # VIABLE
        "getfd_without_container": -EINVAL, "set_iommu_without_group": -ENODEV,
        "set_container_minus1": -EINVAL, "set_container_not_iommufd": -EBADFD,
        "set_container": 0, "set_container_again": -EINVAL, "flags_after": 3,
        "set_iommu": 0, "devfd_is_fd": True, "getfd_unknown": -ENODEV,
        "getfd_name_unreadable": -14, "getfd_name_too_long": -EINVAL,
        "info": [24, 3, 9, 5, 0, 0],                                  # PCI|RESET, 9 regions, 5 irqs
        "bind_on_group_fd": -EINVAL, "attach_on_group_fd": -ENOTTY,
        "map_dma": 0, "engine_status": [1, 0], "filled": True,        # DONE, no error
        "unset_with_device_open": -EBUSY, "unset": 0, "unset_again": -EINVAL,
        "cdev_bind_after_group_closed": 0,
    }, out
    assert out["group"].isdigit()


def test_device_fd_after_the_compat_ioas_is_cleared(mount):
    """GET_DEVICE_FD once the container's compat IOAS is gone (IOMMU_VFIO_IOAS
    CLEAR after SET_CONTAINER) is ENODEV, as iommufd_vfio_compat_ioas_get_id
    answers, and leaves the device unbound; the fuzz test found it failing
    with an exception in core."""
    import json as _json
    import os
    import subprocess

    from conftest import client_env

    code = r'''
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
def io(fd, cmd, arg=None):
    r = libc.ioctl(fd, cmd, arg)
    return r if r >= 0 else -ctypes.get_errno()
B = ord(";") << 8
M = sys.argv[1]
ctx = os.open(M + "/iommu", os.O_RDWR)
g = os.open(M + "/vfio/0", os.O_RDWR)
assert io(g, B | 104, ctypes.addressof(ctypes.c_int32(ctx))) == 0
clear = ctypes.create_string_buffer(struct.pack("<IIHH", 12, 0, 2, 0))     # IOMMU_VFIO_IOAS CLEAR
assert io(ctx, B | 0x88, ctypes.addressof(clear)) == 0
name = ctypes.create_string_buffer(sys.argv[2].encode())
print(io(g, B | 106, ctypes.addressof(name)))
'''
    with open(os.path.join(mount.path, "devices", "0000:00:03.0", "info")) as f:
        group = _json.load(f)["group"]
    assert group == 0
    p = subprocess.run([sys.executable, "-c", code, mount.path, "0000:00:03.0"],
                       capture_output=True, text=True, env=client_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == -19                                        # ENODEV
    with open(os.path.join(mount.path, "devices", "0000:00:03.0", "info")) as f:
        assert _json.load(f)["dev_id"] is None
    assert "Traceback" not in mount.log_text()
