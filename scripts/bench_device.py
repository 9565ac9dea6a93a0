#!/usr/bin/env python3
"""VFIO device half benchmark (DESIGN.md, Performance targets). Prints, from one run:

- region access ÷ the null ioctl (IOMMUFS_NULL), both on the same VFIO node:
  a 4-byte read and a 4-byte write of a dma-engine BAR0 register, a 4-byte
  read and write of config space: goal <= 1.5;
- interrupt delivery latency: a dma-engine doorbell write with the
  completion interrupt (CONTROL bit 1) until the MSI-X vector 0 eventfd is
  readable in the client (poll()), median and p90 in µs;
- with QEMU and the test guest installed (scripts/guest), the guest's
  sequential read throughput of the passed-through iommufs virtio-blk ÷ the
  same guest on QEMU's own emulated virtio-blk with the same image
  (scripts/guest/bench_virtio_blk.py): goal >= 0.5.

Server and client are pinned to one CPU (``taskset -c CPU``), as
scripts/bench_transport.py does: this kind of VM is slow at waking a
process on another CPU, so pinned figures measure CPU cost. The client is C
(built here from the source below) so that the figures are the transport's
and the emulator's, not the client's. Each ratio is the median of ROUNDS
interleaved rounds of N calls. Run as root:

    python3 scripts/bench_device.py [-n 20000] [--rounds 5] [--cpu 0] [--no-guest]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_transport import stop, wait_mounted  # noqa: E402  (scripts/ is this script's directory)

NODE = "vfio1"          # the built-in topology's dma-engine (0000:00:04.0)

# The measuring client: one process binds the node, then runs every mode
# round by round, printing "MODE ROUND US_PER_CALL" (and for the interrupt
# "irq ROUND MEDIAN_US P90_US").
CLIENT_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uapi.h"

#define REGION(i, pos) ((off_t)(((uint64_t)(i) << VFIO_PCI_OFFSET_SHIFT) | (pos)))
#define CFG VFIO_PCI_CONFIG_REGION_INDEX
#define IOVA 0x100000ULL

static int devfd;

static void die(const char *what)
{
    fprintf(stderr, "bench client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void wr(unsigned index, unsigned pos, uint32_t v)
{
    if (pwrite(devfd, &v, 4, REGION(index, pos)) != 4)
        die("pwrite");
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: MOUNT NODE N ROUNDS\n");
        return 2;
    }
    char path[4096];
    long n = atol(argv[3]), rounds = atol(argv[4]);
    snprintf(path, sizeof(path), "%s/iommu", argv[1]);
    int iommufd = open(path, O_RDWR);
    snprintf(path, sizeof(path), "%s/vfio/devices/%s", argv[1], argv[2]);
    devfd = open(path, O_RDWR);
    if (iommufd < 0 || devfd < 0)
        die("open");
    struct vfio_device_bind_iommufd bind = { sizeof(bind), 0, iommufd, 0, 0 };
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    if (ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind) || ioctl(iommufd, IOMMU_IOAS_ALLOC, &al))
        die("bind");
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, al.out_ioas_id, 0 };
    void *buf = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct iommu_ioas_map map = { sizeof(map),
        IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        al.out_ioas_id, 0, (uintptr_t)buf, 1 << 20, IOVA };
    if (ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) || ioctl(iommufd, IOMMU_IOAS_MAP, &map))
        die("attach/map");
    wr(CFG, 0x04, 0x0006);                          /* memory decode, bus master */
    int efd = eventfd(0, EFD_CLOEXEC);
    union {
        struct vfio_irq_set s;
        unsigned char raw[sizeof(struct vfio_irq_set) + 4];
    } irq = { .s = { 24, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1 } };
    memcpy(irq.s.data, &efd, 4);
    if (ioctl(devfd, VFIO_DEVICE_SET_IRQS, &irq.s))
        die("set_irqs");
    /* The descriptor the doorbell runs: fill 4 bytes, completion interrupt. */
    wr(0, 0x10, (uint32_t)IOVA);
    wr(0, 0x18, 4);
    wr(0, 0x1c, 1);
    wr(0, 0x28, 2);

    double *lat = malloc(sizeof(double) * n);
    uint32_t v = 0;
    struct vfio_irq_info ii = { sizeof(ii), 0, VFIO_PCI_MSIX_IRQ_INDEX, 0 };
    enum { NULLIOC, BAR_READ, BAR_WRITE, CFG_READ, CFG_WRITE, IRQ_INFO, NMODES };
    static const char *names[NMODES] = { "null", "bar_read", "bar_write", "cfg_read", "cfg_write", "irq_info" };
    const long blocks = 20, b = n / blocks > 0 ? n / blocks : 1;
    for (long r = 0; r < rounds; r++) {
        /* Modes alternate in short blocks: the other load on the machine
         * then weighs on each of them alike. */
        double total[NMODES] = { 0 };
        for (long k = 0; k < blocks; k++) {
            for (int mode = 0; mode < NMODES; mode++) {
                double t0 = now_us();
                for (long i = 0; i < b; i++) {
                    int bad;
                    switch (mode) {
                    case NULLIOC: bad = ioctl(devfd, IOMMUFS_NULL, NULL) != 0; break;
                    case BAR_READ: bad = pread(devfd, &v, 4, REGION(0, 0x18)) != 4; break;
                    case BAR_WRITE: bad = pwrite(devfd, &v, 4, REGION(0, 0x20)) != 4; break;
                    case CFG_READ: bad = pread(devfd, &v, 4, REGION(CFG, 0)) != 4; break;
                    case CFG_WRITE:
                        v = 0x0000010b;                 /* Interrupt Line (the rest read-only) */
                        bad = pwrite(devfd, &v, 4, REGION(CFG, 0x3c)) != 4;
                        break;
                    default: bad = ioctl(devfd, VFIO_DEVICE_GET_IRQ_INFO, &ii) != 0; break;
                    }
                    if (bad)
                        die(names[mode]);
                }
                total[mode] += now_us() - t0;
            }
        }
        for (int mode = 0; mode < NMODES; mode++)
            printf("%s %ld %.3f\n", names[mode], r, total[mode] / (b * blocks));
        long m = n / 4;
        for (long i = 0; i < m; i++) {
            uint32_t one = 1;
            uint64_t cnt;
            struct pollfd p = { efd, POLLIN, 0 };
            double s = now_us();
            if (pwrite(devfd, &one, 4, REGION(0, 0x2c)) != 4)
                die("doorbell");
            if (poll(&p, 1, 5000) != 1)
                die("interrupt never came");
            lat[i] = now_us() - s;
            if (read(efd, &cnt, 8) != 8 || cnt != 1)
                die("eventfd count");
        }
        qsort(lat, m, sizeof(double), cmp);
        printf("irq %ld %.3f %.3f\n", r, lat[m / 2], lat[m * 9 / 10]);
        fflush(stdout);
    }
    ioctl(devfd, IOMMUFS_SYNC_CLOSE, NULL);
    return 0;
}
"""


def build(tmp):
    """Compile the measuring client into ``tmp``; returns its path."""
    src = os.path.join(tmp, "bench_device_client.c")
    with open(src, "w") as f:
        f.write(CLIENT_C)
    exe = os.path.join(tmp, "bench_device_client")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-I", os.path.join(ROOT, "tests", "c"), "-o", exe, src],
                   check=True)
    return exe


def guest_ratio(args):
    """Run scripts/guest/bench_virtio_blk.py with the iommufs virtio-blk at
    01f5:00:03.0 (the sysfs view's domain); returns (its output, ratio or
    None). None output: QEMU or the guest is not installed."""
    sys.path.insert(0, os.path.join(ROOT, "scripts", "guest"))
    import boot

    try:
        boot.artifacts()
    except boot.GuestNotInstalled as e:
        return None, str(e)
    tmp = tempfile.mkdtemp(prefix="iommufs-bench-device-")
    try:
        topo = os.path.join(tmp, "topology.toml")
        with open(topo, "w") as f:
            f.write('[[device]]\nname = "0000:00:03.0"\nmodel = "virtio-blk"\ndisk = "@IMAGE@"\n')
        p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "guest", "bench_virtio_blk.py"),
                            "--topology", topo, "--bdf", "01f5:00:03.0", "--size-mib", str(args.guest_mib),
                            "--runs", str(args.guest_runs)], capture_output=True, text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = p.stdout + (p.stderr if p.returncode else "")
    m = re.search(r"ratio passthrough/emulated: ([0-9.]+)", p.stdout)
    return out, float(m.group(1)) if m else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20000, help="calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", default="0", help="the CPU server and client are pinned to")
    p.add_argument("--no-guest", action="store_true", help="skip the guest throughput ratio")
    p.add_argument("--guest-mib", type=int, default=64, help="guest disk image size")
    p.add_argument("--guest-runs", type=int, default=1, help="guest boots per variant")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="iommufs-bench-device-")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    proc = None
    try:
        cli = build(tmp)
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.Popen(["taskset", "-c", args.cpu, sys.executable, "-m", "devfs.cli", "mount", mnt,
                                 "--foreground"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        wait_mounted(mnt, proc)
        out = subprocess.run(["taskset", "-c", args.cpu, cli, mnt, NODE, str(args.n), str(args.rounds)],
                             check=True, capture_output=True, text=True).stdout
    finally:
        if proc is not None:
            stop(mnt, proc)
        shutil.rmtree(tmp, ignore_errors=True)

    per = {}
    for line in out.splitlines():
        mode, _round, *vals = line.split()
        per.setdefault(mode, []).append([float(v) for v in vals])
    med = statistics.median
    fig = {mode: med(v[0] for v in rows) for mode, rows in per.items()}
    print(f"pinned to CPU {args.cpu}; {NODE} (dma-engine); median of {args.rounds} rounds of {args.n} calls")
    print(f"  null ioctl (IOMMUFS_NULL)          {fig['null']:8.2f} µs")
    names = {"bar_read": "BAR0 read 4 bytes", "bar_write": "BAR0 write 4 bytes",
             "cfg_read": "config read 4 bytes", "cfg_write": "config write 4 bytes"}
    for mode, label in names.items():
        print(f"  {label:34s} {fig[mode]:8.2f} µs")
    # Core work of the same weight through the ioctl path: tells the cost of
    # the read/write path of the transport apart from the emulator's.
    print(f"  for comparison: GET_IRQ_INFO ioctl  {fig['irq_info']:8.2f} µs "
          f"({fig['irq_info'] / fig['null']:.2f} x null)")
    print("ratios, median of the rounds' own ratios (goal <= 1.5)")
    for mode, label in names.items():
        ratio = med(m[0] / z[0] for m, z in zip(per[mode], per["null"]))
        print(f"  {label + ' / null ioctl':40s} {ratio:5.2f}")
    irq = per["irq"]
    print(f"interrupt: doorbell write -> MSI-X eventfd readable, {args.n // 4} per round: "
          f"median {med(r[0] for r in irq):.2f} µs, p90 {med(r[1] for r in irq):.2f} µs")

    if args.no_guest:
        print("guest virtio-blk throughput: skipped (--no-guest)")
        return
    text, ratio = guest_ratio(args)
    if text is None:
        print(f"guest virtio-blk throughput: skipped ({ratio})")
        return
    print("guest sequential read, scripts/guest/bench_virtio_blk.py:")
    print(textwrap.indent(text.rstrip(), "  "))
    if ratio is None:
        print("guest virtio-blk ratio: not measured (see above)")
    else:
        print(f"guest read passed-through / emulated virtio-blk  {ratio:5.2f}   (goal >= 0.5)")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
