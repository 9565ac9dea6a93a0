#!/usr/bin/env python3
"""Core benchmarks, no mount: IOMMU_IOAS_MAP cost against the number of areas,
and device DMA bandwidth against raw process_vm_writev.

    python scripts/bench_core.py

Prints, from one run:
- µs per IOMMU_IOAS_MAP (4 KiB, fixed IOVA, one HWPT attached) with 100 areas
  and with 100 000 areas in the IOAS, and their ratio (target <= 2);
- DMA write of 512 KiB through the IOMMU (translate + process_vm_writev into
  a separate process) vs raw process_vm_writev of the same bytes, as a
  bandwidth ratio (target >= 50 %).
"""
import mmap
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from cext._native import ffi as nffi, lib as nlib  # noqa: E402
from core import uapi  # noqa: E402
from core.iommu.dma import REQ  # noqa: E402
from core.mm.usermem import MemArg  # noqa: E402

from corekit import Kit, addr, new  # noqa: E402

PAGE = 4096


def map_rate(kit, ioas, va, first_iova, count):
    """µs per 4 KiB IOMMU_IOAS_MAP at ``count`` consecutive fixed IOVAs."""
    c = new("iommu_ioas_map", flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
            | uapi.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=ioas, user_va=va, length=PAGE)
    arg = MemArg(kit.caller.mem, addr(c))
    ioctl, caller = kit.iommufd.ioctl, kit.caller
    t0 = time.perf_counter()
    for i in range(count):
        c.iova = first_iova + 2 * i * PAGE       # a gap between areas: no merging anywhere
        ioctl(caller, uapi.IOMMU_IOAS_MAP, arg)
    return (time.perf_counter() - t0) / count * 1e6


def bench_areas():
    kit = Kit()
    ioas = kit.ioas()
    vf, dev_id = kit.bind("0000:00:03.0")
    kit.attach(vf, kit.hwpt(dev_id, ioas))
    buf = mmap.mmap(-1, PAGE)
    va = addr(nffi.from_buffer(buf))
    # 100 areas, then time 2 000 more; grow to 100 000, time 2 000 more.
    base = 1 << 32
    map_rate(kit, ioas, va, base, 100)
    small = map_rate(kit, ioas, va, base + (1 << 30), 2000)
    map_rate(kit, ioas, va, base + (2 << 30), 100_000 - 2100)
    large = map_rate(kit, ioas, va, base + (4 << 30), 2000)
    print(f"IOAS_MAP 4 KiB (core, HWPT attached): {small:.1f} µs at ~100 areas, {large:.1f} µs at ~100 000 areas")
    print(f"  ratio 100 000 / 100 areas: {large / small:.2f}x (target <= 2)")
    kit.close()


def bench_dma():
    size = 512 * 1024
    # The owner is another process, as for a real client.
    child = subprocess.Popen([sys.executable, "-c", (
        "import mmap, sys, cffi; f = cffi.FFI(); m = mmap.mmap(-1, %d); "
        "print(int(f.cast('uintptr_t', f.from_buffer(m))), flush=True); sys.stdin.read()") % size],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    va = int(child.stdout.readline())
    kit = Kit()
    from core.mm.usermem import OwnerTable  # noqa: F401
    ioas = kit.ioas()
    vf, dev_id = kit.bind("0000:00:03.0")
    kit.attach(vf, ioas)
    # Map the child's buffer as if the child had called IOAS_MAP.
    from core.caller import Caller

    owner_caller = Caller(child.pid, os.getuid(), os.getgid())
    c = new("iommu_ioas_map", flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
            | uapi.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=ioas, user_va=va, length=size, iova=1 << 30)
    kit.iommufd.ioctl(owner_caller, uapi.IOMMU_IOAS_MAP, MemArg(kit.caller.mem, addr(c)))
    data = os.urandom(size)
    req = REQ.pack(b"IODM", 2, 0, 0, 1 << 30, size, 0) + data
    port = kit.emu.open(kit.emu.node("devices/0000:00:03.0/dma"), kit.caller)
    n = 400
    t0 = time.perf_counter()
    for _ in range(n):
        port.request(kit.caller, req)
    t_dma = (time.perf_counter() - t0) / n
    local = nffi.from_buffer(data)
    t0 = time.perf_counter()
    for _ in range(n):
        nlib.iofs_vm_write(child.pid, va, local, size)
    t_raw = (time.perf_counter() - t0) / n
    print(f"DMA write 512 KiB: {size / t_dma / 1e9:.2f} GB/s through the IOMMU, "
          f"{size / t_raw / 1e9:.2f} GB/s raw process_vm_writev")
    print(f"  DMA / raw bandwidth: {t_raw / t_dma * 100:.0f} % (target >= 50 %)")
    child.stdin.close()
    child.wait()
    kit.close()


if __name__ == "__main__":
    bench_areas()
    bench_dma()
