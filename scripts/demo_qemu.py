#!/usr/bin/env python3
"""The call sequence of QEMU's iommufd backend (reference §14), against a mount.

    python scripts/demo_qemu.py [MOUNT] [--device BDF] [--frames]

Runs as a separate process: open /dev/iommu, bind the device, IOAS_ALLOC,
GET_HW_INFO, HWPT_ALLOC (with DIRTY_TRACKING when the device has it),
attach, IOVA_RANGES twice (size probe, then with a buffer), a fixed-IOVA map
of a "guest RAM" buffer, a device DMA write then read of a pattern, the
pattern checked in this process's own buffer, unmap-all as two halves,
detach, destroy, close. Prints each step; exits non-zero on any mismatch.
"""
import argparse
import errno
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from core import uapi  # noqa: E402
from core.uapi import ffi  # noqa: E402
from devfs.client import Buffer, DmaPort, Iommufd, VfioDevice  # noqa: E402

GUEST_RAM = 16 << 20
GPA = 0


def step(msg):
    print(f"  {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mount", nargs="?", default="/mnt/iommufs")
    ap.add_argument("--device", default="0000:00:03.0")
    ap.add_argument("--frames", action="store_true", help="use write/read frames instead of ioctl()")
    a = ap.parse_args()

    print(f"QEMU iommufd backend sequence on {a.mount} ({'frames' if a.frames else 'ioctl()'})")
    iommufd = Iommufd(a.mount, frames=a.frames)
    step(f"open {a.mount}/iommu -> fd {iommufd.fd}")
    dev = VfioDevice(a.mount, a.device, frames=a.frames)
    step(f"open {dev.path} -> fd {dev.fd}")
    dev_id = dev.bind(iommufd)
    step(f"VFIO_DEVICE_BIND_IOMMUFD -> dev_id {dev_id}")
    ioas = iommufd.ioas_alloc()
    step(f"IOMMU_IOAS_ALLOC -> ioas_id {ioas}")
    info = iommufd.get_hw_info(dev_id)
    step(f"IOMMU_GET_HW_INFO -> type {info['out_data_type']}, caps {info['out_capabilities']:#x}, "
         f"max_pasid_log2 {info['out_max_pasid_log2']}")
    flags = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if info["out_capabilities"] & uapi.IOMMU_HW_CAP_DIRTY_TRACKING else 0
    hwpt = iommufd.hwpt_alloc(dev_id, ioas, flags=flags)
    step(f"IOMMU_HWPT_ALLOC(pt_id={ioas}, flags={flags:#x}) -> hwpt_id {hwpt}")
    got = dev.attach(hwpt)
    step(f"VFIO_DEVICE_ATTACH_IOMMUFD_PT(pt_id={hwpt}) -> pt_id {got}")
    assert got == hwpt

    # IOVA_RANGES with num_iovas=0 first: QEMU expects EMSGSIZE (or 0 ranges).
    probe = ffi.new("struct iommu_ioas_iova_ranges *", {"size": 32, "ioas_id": ioas})
    try:
        iommufd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, probe)
        step("IOMMU_IOAS_IOVA_RANGES(num_iovas=0) -> 0 ranges")
    except OSError as e:
        assert e.errno == errno.EMSGSIZE, e
        step(f"IOMMU_IOAS_IOVA_RANGES(num_iovas=0) -> EMSGSIZE, num_iovas {probe.num_iovas}")
    ranges, align = iommufd.iova_ranges(ioas, capacity=probe.num_iovas)
    step("IOMMU_IOAS_IOVA_RANGES -> " + ", ".join(f"[{s:#x}, {l:#x}]" for s, l in ranges)
         + f", alignment {align:#x}")

    ram = Buffer(GUEST_RAM)
    iova = iommufd.ioas_map(ioas, ram.va, GUEST_RAM, iova=GPA,
                            flags=uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE)
    step(f"IOMMU_IOAS_MAP(FIXED_IOVA, iova={GPA:#x}, user_va={ram.va:#x}, length={GUEST_RAM:#x}) -> {iova:#x}")

    port = DmaPort(a.mount, a.device)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(64 * 1024))
    target = GPA + 0x123000
    port.write(target, pattern)
    step(f"device DMA write of {len(pattern)} bytes at IOVA {target:#x}")
    off = target - GPA
    if ram[off:off + len(pattern)] != pattern:
        print("FAIL: the pattern is not in the client's buffer", file=sys.stderr)
        return 1
    step(f"pattern found in the client's own buffer at user_va {ram.va + off:#x}")
    ram[off:off + 16] = b"written by CPU!!"
    back = port.read(target, len(pattern))
    if back[:16] != b"written by CPU!!" or back[16:] != pattern[16:]:
        print("FAIL: device read did not see the client's memory", file=sys.stderr)
        return 1
    step(f"device DMA read of {len(back)} bytes at IOVA {target:#x}: matches the client's memory")

    n1 = iommufd.ioas_unmap(ioas, 0, 1 << 63)
    try:
        n2 = iommufd.ioas_unmap(ioas, 1 << 63, 1 << 63)
    except OSError as e:
        # QEMU treats ENOENT (nothing mapped in that half) as success.
        assert e.errno == errno.ENOENT, e
        n2 = None
    step(f"IOMMU_IOAS_UNMAP(0, 2^63) -> {n1:#x} bytes")
    step("IOMMU_IOAS_UNMAP(2^63, 2^63) -> " + ("ENOENT (nothing there; QEMU treats it as success)"
                                            if n2 is None else f"{n2:#x} bytes"))
    if n1 != GUEST_RAM:
        print("FAIL: unmap did not report the guest RAM size", file=sys.stderr)
        return 1
    dev.detach()
    step("VFIO_DEVICE_DETACH_IOMMUFD_PT")
    iommufd.destroy(hwpt)
    step(f"IOMMU_DESTROY(hwpt {hwpt})")
    iommufd.destroy(ioas)
    step(f"IOMMU_DESTROY(ioas {ioas})")
    port.close()
    dev.close()
    step("close(device fd): unbind")
    iommufd.sync_close()
    step("close(iommufd)")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
