#!/usr/bin/env python3
"""The scenarios of the RFC threads (../shared/seeds), step by step, against
a mount with the built-in topology.

    python scripts/demo_seeds.py [MOUNT] [--only 001,002,003,004]

Each scenario prints its steps and checks every claim with device DMA into
this process's own memory; the script exits non-zero at the first mismatch.

- 001 groups: devices behind a PCIe-to-PCI bridge share the bridge's RID;
  one HWPT per group; a member's DMA reaches what another member attached.
- 003 per-domain PASID: PASIDs from the device's own space or the global
  (ENQCMD) one; the PASID lives in the attachment, so one HWPT serves two
  devices under their own PASIDs.
- 004 mdev: an mdev binds like a device but its DMA is {parent RID, default
  PASID}; the IOMMU finds the mdev from that pair.
- 002 SVA: bind a process's address space to a device, get the PASID, DMA at
  the process's virtual addresses, mm_exit when it exits, unbind.
- iopf (seed 004, RFC v2 §4.6 "I/O page fault"): a PRI device's DMA to an
  unmapped IOVA waits; the fault reaches the queue as (dev_id, address);
  the handler (here, woken by epoll) maps the page and answers, and the DMA
  completes.
"""
import argparse
import errno
import os
import select
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from core import uapi  # noqa: E402
from devfs.client import (Buffer, DeviceDriver, DmaError, DmaPort, Iommufd,  # noqa: E402
                          VfioDevice)

PLAIN, ACCEL, LOCAL = "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"
BR0, BR1 = "0000:01:00.0", "0000:01:01.0"
MB = 1 << 20


def step(msg):
    print(f"  {msg}", flush=True)


def check(cond, what):
    if not cond:
        print(f"  FAILED: {what}", flush=True)
        sys.exit(1)


def expect_errno(fn, want, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        check(e.errno == want, f"{fn.__name__}: {errno.errorcode.get(e.errno)} instead of "
                               f"{errno.errorcode[want]}")
        return
    check(False, f"{fn.__name__} succeeded, expected {errno.errorcode[want]}")


def seed_001(m):
    print("seed 001: a group behind a PCIe-to-PCI bridge")
    fd = Iommufd(m)
    d0, d1 = VfioDevice(m, BR0), VfioDevice(m, BR1)
    id0, id1 = d0.bind(fd), d1.bind(fd)
    step(f"bind {BR0} -> dev_id {id0}, {BR1} -> dev_id {id1} (one context owns the group)")
    ioas = fd.ioas_alloc()
    h0, h1 = fd.hwpt_alloc(id0, ioas), fd.hwpt_alloc(id1, ioas)
    d0.attach(h0)
    step(f"attach {BR0} to HWPT {h0}")
    expect_errno(d1.attach, errno.EINVAL, h1)
    step(f"attach {BR1} to another HWPT {h1} -> EINVAL: all these devices share one address space")
    buf = Buffer(MB)
    fd.ioas_map(ioas, buf.va, MB, iova=0x10000000)
    DmaPort(m, BR1).write(0x10000000, b"alias RID")
    check(buf[0:9] == b"alias RID", "the alias DMA landed")
    step(f"{BR1} (never attached) DMAs with the bridge's RID -> lands through HWPT {h0}")
    for x in (d0, d1, fd):
        x.sync_close()


def seed_003(m):
    print("seed 003: per-device and global PASID spaces")
    accel, local = DeviceDriver(m, ACCEL), DeviceDriver(m, LOCAL)
    pa, pl = accel.pasid_alloc(), local.pasid_alloc()
    step(f"{ACCEL} (ENQCMD) allocates PASID {pa} from the global space; "
         f"{LOCAL} allocates PASID {pl} from its own")
    fd = Iommufd(m)
    va, vl = VfioDevice(m, ACCEL), VfioDevice(m, LOCAL)
    ida, idl = va.bind(fd), vl.bind(fd)
    ioas = fd.ioas_alloc()
    hwpt = fd.hwpt_alloc(ida, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    va.attach(hwpt, pasid=pa)
    vl.attach(hwpt, pasid=pl)
    step(f"one PASID-capable HWPT {hwpt}: {ACCEL}@PASID {pa} and {LOCAL}@PASID {pl} attached to it")
    buf = Buffer(MB)
    fd.ioas_map(ioas, buf.va, MB, iova=0x200000)
    DmaPort(m, ACCEL).write(0x200000, b"from accel", pasid=pa)
    DmaPort(m, LOCAL).write(0x200010, b"from local", pasid=pl)
    check(buf[0:10] == b"from accel" and buf[0x10:0x1a] == b"from local", "both DMAs landed")
    step("both devices' DMA translated by the same page table, routed by their own attachments")
    for x in (va, vl, fd, accel, local):
        x.sync_close()


def seed_004(m):
    print("seed 004: an mdev is its parent's RID plus a default PASID")
    fd = Iommufd(m)
    md = VfioDevice(m, "mdev0")
    idm = md.bind(fd)
    ioas = fd.ioas_alloc()
    hwpt = md.attach(ioas)
    step(f"bind mdev0 -> dev_id {idm}; attach it to IOAS {ioas} -> HWPT {hwpt}")
    buf = Buffer(MB)
    fd.ioas_map(ioas, buf.va, MB, iova=0x300000)
    DmaPort(m, "mdev0").write(0x300000, b"mdev")
    DmaPort(m, ACCEL).write(0x300004, b"+PASID 1", pasid=1)
    check(buf[0:12] == b"mdev+PASID 1", "mdev DMA landed")
    step("mdev0's DMA and the parent's DMA with PASID 1 are the same TLPs: both land in HWPT "
         f"{hwpt}, found from {{parent RID, PASID 1}}")
    for x in (md, fd):
        x.sync_close()


CHILD = ("import mmap, sys, cffi; f = cffi.FFI(); m = mmap.mmap(-1, 4096); "
         "print(int(f.cast('uintptr_t', f.from_buffer(m))), flush=True); sys.stdin.readline(); "
         "print(m[0:12].decode(), flush=True); sys.stdin.readline()")


def seed_002(m):
    print("seed 002: SVA bond, PASID, mm_exit, unbind")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    va = int(child.stdout.readline())
    drv = DeviceDriver(m, ACCEL)
    handle, pasid = drv.sva_bind(child.pid)
    step(f"bind process {child.pid} to {ACCEL} -> handle {handle}, PASID {pasid}")
    DmaPort(m, ACCEL).write(va, b"shared by VA", pasid=pasid)
    child.stdin.write("\n")
    child.stdin.flush()
    check(child.stdout.readline().strip() == "shared by VA", "the process saw the DMA")
    step(f"device DMA with PASID {pasid} at IOVA {va:#x} = the process's VA: it reads 'shared by VA'")
    p = select.poll()
    p.register(drv.fd, select.POLLIN)
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait()
    check(bool(p.poll(10000)), "poll woke")
    ev = drv.events()
    check(ev and ev[0]["type"] == "mm_exit" and ev[0]["handle"] == handle, "mm_exit event")
    step(f"the process exits: poll wakes, the driver reads {ev[0]}")
    try:
        DmaPort(m, ACCEL).write(va, b"x", pasid=pasid)
        check(False, "DMA after mm_exit must fail")
    except DmaError as e:
        check(e.errno == errno.EFAULT, "EFAULT after mm_exit")
    step("DMA with that PASID now fails with EFAULT")
    check(drv.sva_unbind(handle) == pasid, "unbind")
    step("unbind still required, and succeeds")
    drv.sync_close()


def seed_iopf(m):
    print("seed 004 (RFC v2 4.6): I/O page fault, page response, DMA retried")
    fd = Iommufd(m)
    dev = VfioDevice(m, ACCEL)
    dev_id = dev.bind(fd)
    fault_id, fq = fd.fault_queue_alloc()
    step(f"IOMMU_FAULT_QUEUE_ALLOC -> FAULT {fault_id}, fault fd {fq.fd} ({fq.path})")
    ioas = fd.ioas_alloc()
    hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=fault_id)
    dev.attach(hwpt)
    step(f"HWPT {hwpt} with FAULT_ID_VALID; {ACCEL} (PRI) attached; nothing mapped yet")
    buf = Buffer(MB)
    result = {}

    def device():
        try:
            DmaPort(m, ACCEL).write(0x50000000 + 0x100, b"after the page response")
            result["status"] = 0
        except DmaError as e:
            result["status"] = e.errno

    t = threading.Thread(target=device)
    t.start()
    ep = select.epoll()
    ep.register(fq.fileno(), select.EPOLLIN)
    check(ep.poll(10), "epoll woke")
    (group,) = fq.read_groups()
    r = group[0]
    step(f"the device DMAs to IOVA 0x50000100: epoll wakes; the fault fd gives dev_id {r['dev_id']}, "
         f"addr {r['addr']:#x}, perm {r['perm']}, cookie {r['cookie']}")
    check(r["dev_id"] == dev_id and r["addr"] == 0x50000000, "the fault names the device and page")
    fd.ioas_map(ioas, buf.va, 4096, iova=r["addr"])
    fq.respond((r["cookie"], uapi.IOMMU_PAGE_RESP_SUCCESS))
    step("the handler maps the page and writes a SUCCESS page response")
    t.join(10)
    check(result.get("status") == 0 and buf[0x100:0x117] == b"after the page response",
          "the DMA completed into the new mapping")
    step("the waiting DMA retries and completes: 'after the page response' is in our buffer")
    fq.close()
    for x in (dev, fd):
        x.sync_close()


SCENARIOS = {"001": seed_001, "003": seed_003, "004": seed_004, "002": seed_002, "iopf": seed_iopf}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mount", nargs="?", default="/mnt/iommufs")
    ap.add_argument("--only", default=",".join(SCENARIOS))
    a = ap.parse_args()
    for name in a.only.split(","):
        SCENARIOS[name](a.mount)
    print("all scenarios ok")


if __name__ == "__main__":
    main()
