#!/usr/bin/env python3
"""Dirty-tracking benchmark (issue 11; QEMU's migration path, reference §14
step 10). Prints the cost of IOMMU_HWPT_GET_DIRTY_BITMAP per GiB of IOVA
tracked (µs/GiB), through a real mount, as a VMM calls it each migration
round: a DIRTY_TRACKING HWPT of a topology device, guest RAM mapped at a
fixed IOVA, tracking on, then one GET_DIRTY_BITMAP (page_size 4 KiB,
clearing) over all of it, for

- IOPTE size: 4 KiB leaves (IOMMU_OPTION HUGE_PAGES=0) and 2 MiB leaves;
- dirty pages: none, and a share of the pages written by the device's DMA
  (``--dirty``, default 1 %) before each call.

The server runs as root in its own process; the client is this process.

    python3 scripts/bench_dirty.py [--gib 1] [-n 20] [--dirty 0.01] [--cpu all]
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_transport import stop, wait_mounted  # noqa: E402

DEVICE = "0000:00:03.0"            # the built-in topology's plain device: dirty_tracking = true
PAGE = 4096
BASE = 1 << 32


def bench(mnt, gib, n, dirty_share, huge):
    from core import uapi
    from core.uapi import ffi
    from devfs.client import Buffer, DmaPort, Iommufd, VfioDevice

    size = int(gib * (1 << 30))
    fd = Iommufd(mnt)
    dev = VfioDevice(mnt, DEVICE)
    dev_id = dev.bind(fd)
    ioas = fd.ioas_alloc()
    if not huge:
        opt = ffi.new("struct iommu_option *", {"size": 24, "option_id": uapi.IOMMU_OPTION_HUGE_PAGES,
                                                "op": uapi.IOMMU_OPTION_OP_SET, "object_id": ioas})
        fd.ioctl(uapi.IOMMU_OPTION, opt)
    c = ffi.new("struct iommu_hwpt_alloc *", {"size": 48, "dev_id": dev_id, "pt_id": ioas,
                                              "flags": uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING})
    fd.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
    hwpt = c.out_hwpt_id
    dev.attach(hwpt)
    ram = Buffer(size + (2 << 20))
    va = (ram.va + (2 << 20) - 1) & ~((2 << 20) - 1)          # 2 MiB aligned: huge leaves
    fd.ioas_map(ioas, va, size, iova=BASE)
    s = ffi.new("struct iommu_hwpt_set_dirty_tracking *", {"size": 16, "hwpt_id": hwpt, "flags": 1})
    fd.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, s)
    npages = size // PAGE
    bitmap = Buffer((npages + 7) // 8 + PAGE)
    g = ffi.new("struct iommu_hwpt_get_dirty_bitmap *", {"size": 48, "hwpt_id": hwpt, "iova": BASE,
                                                         "length": size, "page_size": PAGE,
                                                         "data": bitmap.va})
    port = DmaPort(mnt, DEVICE)
    rng = random.Random(1)
    out = {}
    for label, share in (("clean", 0.0), (f"{dirty_share:.0%} dirty", dirty_share)):
        times = []
        for _ in range(n):
            for p in rng.sample(range(npages), int(npages * share)):
                port.write(BASE + p * PAGE, b"\1")
            t0 = time.perf_counter()
            fd.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, g)
            times.append(time.perf_counter() - t0)
        times.sort()
        out[label] = times[len(times) // 2] * 1e6 / gib
    port.close()
    dev.close()
    fd.close()
    ram.close()
    bitmap.close()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=1.0, help="GiB of IOVA tracked")
    p.add_argument("-n", type=int, default=20, help="calls per case (the median is printed)")
    p.add_argument("--dirty", type=float, default=0.01, help="share of pages written before each call")
    p.add_argument("--cpu", default="all", help="CPU to pin the server to, or 'all'")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="iommufs-bench-")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    cmd = [sys.executable, "-m", "devfs.cli", "mount", mnt, "--foreground"]
    if args.cpu != "all":
        cmd = ["taskset", "-c", args.cpu] + cmd
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, proc)
        print(f"IOMMU_HWPT_GET_DIRTY_BITMAP over {args.gib:g} GiB, page_size 4 KiB, "
              f"median of {args.n} calls, µs per GiB tracked:")
        for huge in (False, True):
            leaves = "2 MiB IOPTEs" if huge else "4 KiB IOPTEs"
            for label, us in bench(mnt, args.gib, args.n, args.dirty, huge).items():
                print(f"  {leaves:13} {label:10} {us:10.0f} µs/GiB")
    finally:
        stop(mnt, proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
