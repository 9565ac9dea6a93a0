#!/usr/bin/env python3
"""Transport benchmark (DESIGN.md, Performance targets). Prints ratios from one run.

- null ioctl through iommufs ÷ the same null ioctl served by a minimal C
  libfuse server (scripts/null_llsrv.c): target <= 1.5;
- null frame round trip (write + read) ÷ null ioctl, both through iommufs;
- with core's emulator: IOMMU_IOAS_MAP of 4 KiB at a fixed IOVA ÷ null
  ioctl (core's target <= 1.3).

Server and client are pinned to one CPU (``taskset -c CPU``): this kind of
VM is slow and noisy at waking a process on another CPU (fuse-notes §0), so
pinned figures measure CPU cost. Each figure is the median of ROUNDS
interleaved rounds of N calls from a C client. Run as root:

    python3 scripts/bench_transport.py [-n 20000] [--rounds 5] [--cpu 0]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLIENT_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define IOMMUFS_NULL 0xF500
#define IOMMU_IOAS_ALLOC 0x3b81
#define IOMMU_IOAS_MAP 0x3b85
#define IOMMU_IOAS_UNMAP 0x3b86

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) { perror(what); exit(1); }

/* usage: bench MODE PATH N ROUNDS; prints one µs-per-call figure per round */
int main(int argc, char **argv)
{
    const char *mode = argv[1];
    long n = atol(argv[3]);
    int rounds = atoi(argv[4]);
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) die("open");
    uint32_t req[4] = {0, IOMMUFS_NULL, 0, 0};
    memcpy(req, "IOFS", 4);
    unsigned char rep[64];
    uint32_t ioas = 0;
    void *page = NULL;
    if (strcmp(mode, "map") == 0) {
        struct ioas_alloc a = {sizeof(a), 0, 0};
        if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
        ioas = a.out_ioas_id;
        page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(page, 1, 4096);
    }
    for (long i = 0; i < n / 10; i++)                   /* warm up */
        if (ioctl(fd, IOMMUFS_NULL, 0)) die("ioctl");
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        if (strcmp(mode, "ioctl") == 0) {
            for (long i = 0; i < n; i++)
                if (ioctl(fd, IOMMUFS_NULL, 0)) die("ioctl");
        } else if (strcmp(mode, "frame") == 0) {
            for (long i = 0; i < n; i++) {
                if (write(fd, req, sizeof(req)) != sizeof(req)) die("write");
                if (read(fd, rep, sizeof(rep)) != 16) die("read");
            }
        } else {
            for (long i = 0; i < n; i++) {
                struct ioas_map m = {sizeof(m), 7, ioas, 0, (uint64_t)(uintptr_t)page, 4096,
                                     (1ULL << 32) + (uint64_t)i * 4096};
                if (ioctl(fd, IOMMU_IOAS_MAP, &m)) die("IOAS_MAP");
            }
        }
        double t = now() - t0;
        printf("%.3f\n", t / n * 1e6);
        fflush(stdout);
        if (strcmp(mode, "map") == 0) {                 /* untimed: unmap all */
            struct ioas_unmap u = {sizeof(u), ioas, 0, ~0ULL};
            if (ioctl(fd, IOMMU_IOAS_UNMAP, &u)) die("IOAS_UNMAP");
        }
    }
    return 0;
}
"""


def build(tmp):
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    srv = os.path.join(tmp, "null_llsrv")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", srv, os.path.join(ROOT, "scripts", "null_llsrv.c"),
                    *flags], check=True)
    src = os.path.join(tmp, "bench_client.c")
    with open(src, "w") as f:
        f.write(CLIENT_C)
    cli = os.path.join(tmp, "bench_client")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", cli, src], check=True)
    return srv, cli


def wait_mounted(path, proc, timeout=30):
    from devfs.session import mount_fstype

    end = time.monotonic() + timeout
    while mount_fstype(path) is None:
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"server for {path} did not mount (rc {proc.poll()})")
        time.sleep(0.01)


def stop(path, proc):
    subprocess.run(["fusermount3", "-u", path], capture_output=True)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
        proc.kill()
        proc.wait()


def cpu_seconds(pid):
    """User + system CPU time of every thread of process ``pid`` (seconds)."""
    ticks = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(cli, cpu, mode, node, n, rounds, server=None, cpu_log=None):
    """µs per call of each round; with ``server`` (a pid) also appends the
    server's CPU µs per call (warm-up included: a slight overestimate) to
    ``cpu_log``."""
    before = cpu_seconds(server) if server else 0
    out = subprocess.run(["taskset", "-c", cpu, cli, mode, node, str(n), str(rounds)],
                         check=True, capture_output=True, text=True).stdout
    if server:
        cpu_log.append((cpu_seconds(server) - before) / (n * rounds) * 1e6)
    return [float(x) for x in out.split()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20000, help="calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", default="0", help="the CPU both sides are pinned to")
    p.add_argument("--emulator", help="MODULE:CALLABLE instead of core's Emulator (no MAP figure)")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="iommufs-bench-")
    procs = []
    try:
        srv, cli = build(tmp)
        c_mnt, py_mnt = os.path.join(tmp, "c"), os.path.join(tmp, "py")
        os.mkdir(c_mnt)
        os.mkdir(py_mnt)
        c_proc = subprocess.Popen(["taskset", "-c", args.cpu, srv, c_mnt])
        procs.append((c_mnt, c_proc))
        wait_mounted(c_mnt, c_proc)
        cmd = ["taskset", "-c", args.cpu, sys.executable, "-m", "devfs.cli", "mount", py_mnt,
               "--foreground"]
        if args.emulator:
            cmd += ["--emulator", args.emulator]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
        py_proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        procs.append((py_mnt, py_proc))
        wait_mounted(py_mnt, py_proc)

        c_null, py_null, py_frame, py_map = [], [], [], []
        c_cpu, py_cpu = [], []
        # Interleave the servers round by round: the VM's speed drifts.
        for _ in range(args.rounds):
            c_null += measure(cli, args.cpu, "ioctl", c_mnt + "/iommu", args.n, 1, c_proc.pid, c_cpu)
            py_null += measure(cli, args.cpu, "ioctl", py_mnt + "/iommu", args.n, 1, py_proc.pid, py_cpu)
            py_frame += measure(cli, args.cpu, "frame", py_mnt + "/iommu", args.n, 1)
            if not args.emulator:
                py_map += measure(cli, args.cpu, "map", py_mnt + "/iommu", args.n // 4, 1)
        med = statistics.median
        print(f"pinned to CPU {args.cpu}; median of {args.rounds} rounds of {args.n} calls (µs per call)")
        print(f"  null ioctl, C libfuse server     {med(c_null):8.2f}   rounds {c_null}")
        print(f"  null ioctl, iommufs              {med(py_null):8.2f}   rounds {py_null}")
        print(f"  null frame write+read, iommufs   {med(py_frame):8.2f}")
        print(f"  server CPU per null ioctl: C {med(c_cpu):.2f}, iommufs {med(py_cpu):.2f} "
              f"(µs, user+sys, 10 ms ticks)")
        if py_map:
            print(f"  IOAS_MAP 4 KiB fixed, iommufs    {med(py_map):8.2f}")
        print("ratios")
        print(f"  iommufs null ioctl / C null ioctl   {med(py_null) / med(c_null):5.2f}   (target <= 1.5)")
        print(f"  null frame / null ioctl (iommufs)   {med(py_frame) / med(py_null):5.2f}")
        if py_map:
            print(f"  IOAS_MAP 4 KiB / null ioctl         {med(py_map) / med(py_null):5.2f}   (target <= 1.3)")
    finally:
        for path, proc in reversed(procs):
            stop(path, proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
