#!/usr/bin/env python3
"""I/O page fault benchmark (issue 4; DESIGN.md, Performance targets). Prints,
from one run, for a fault handler waiting with epoll, poll and select:

- wake latency: a PRI device's DMA to an unmapped page is written (t0) until
  the handler holds the fault record (t1);
- full fault round trip: DMA written (t0) -> handler reads, maps the page and
  answers SUCCESS -> the device's DMA reply says done (t2);
- each as a ratio to a plain ioctl round trip (IOMMUFS_NULL, and
  IOMMU_OPTION GET) measured in the same run;
- the round trip as a ratio to the same round trip served by the C floor
  server (scripts/floor_llsrv.c: the same FUSE requests, notification and
  copies, no rule), measured in the same run: goal <= 1.5.

The client is C (tests/c/bench_fault_client.c: a handler process and a
forked device process), so the figures are the emulator's, not a Python client's.
Everything is pinned to one CPU by default (this kind of VM is slow at
cross-CPU wake-ups, fuse-notes §0); ``--cpu all`` leaves placement free.
Run as root:

    python3 scripts/bench_fault.py [-n 2000] [--cpu 0]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_transport import build_floor, stop, wait_mounted  # noqa: E402

DEVICE, VFIO = "0000:00:04.0", "vfio1"       # the built-in topology's PRI accelerator


def run(cli, cpu, mnt, mode, n):
    cmd = [cli, mnt, VFIO, DEVICE, mode, str(n)]
    if cpu != "all":
        cmd = ["taskset", "-c", cpu] + cmd
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {parts[0]: [float(x) for x in parts[1:]] for parts in (line.split() for line in out.splitlines())}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=2000, help="faults per wait method")
    p.add_argument("--cpu", default="0", help="the CPU everything is pinned to, or 'all'")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="iommufs-bench-")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    proc = fproc = None
    fmnt = os.path.join(tmp, "floor")
    os.mkdir(fmnt)
    try:
        cli = os.path.join(tmp, "bench_fault_client")
        subprocess.run(["gcc", "-O2", "-Wall", "-I", os.path.join(ROOT, "tests", "c"), "-o", cli,
                        os.path.join(ROOT, "tests", "c", "bench_fault_client.c")], check=True)
        cmd = [sys.executable, "-m", "devfs.cli", "mount", mnt, "--foreground"]
        if args.cpu != "all":
            cmd = ["taskset", "-c", args.cpu] + cmd
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                stderr=subprocess.DEVNULL)
        wait_mounted(mnt, proc)
        fcmd = [build_floor(tmp), fmnt]
        if args.cpu != "all":
            fcmd = ["taskset", "-c", args.cpu] + fcmd
        fproc = subprocess.Popen(fcmd)
        wait_mounted(fmnt, fproc)
        base = run(cli, args.cpu, mnt, "ioctl", 20000)
        null, option = base["null"][0], base["option"][0]
        where = "pinned to CPU " + args.cpu if args.cpu != "all" else "unpinned"
        print(f"{where}; {args.n} faults per wait method; median and p90 (µs)")
        print(f"  null ioctl round trip                 {null:8.2f}")
        print(f"  IOMMU_OPTION GET round trip           {option:8.2f}")
        rows = []
        for mode in ("epoll", "poll", "select"):
            r = run(cli, args.cpu, mnt, mode, args.n)
            f = run(cli, args.cpu, fmnt, mode, args.n)
            (wm, wp), (rm, rp), fm = r["wake"], r["roundtrip"], f["roundtrip"][0]
            rows.append((mode, wm, rm, fm))
            print(f"  {mode:6} wake latency  {wm:8.2f} (p90 {wp:8.2f})   fault round trip "
                  f"{rm:8.2f} (p90 {rp:8.2f})   C floor's {fm:8.2f}")
        print("ratios (median)")
        for mode, wm, rm, fm in rows:
            print(f"  {mode:6} wake / null ioctl {wm / null:6.2f}   round trip / null ioctl "
                  f"{rm / null:6.2f}   round trip / IOMMU_OPTION {rm / option:6.2f}   "
                  f"round trip / C floor's {rm / fm:5.2f} (goal <= 1.5)")
    finally:
        if fproc is not None:
            stop(fmnt, fproc)
        if proc is not None:
            stop(mnt, proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
