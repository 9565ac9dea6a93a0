#!/usr/bin/env python3
"""Transport benchmark (DESIGN.md, Performance targets). Prints ratios from one run.

- null ioctl through iommufs ÷ the same null ioctl served by a minimal C
  libfuse server (scripts/null_llsrv.c): target <= 1.5;
- null frame round trip (write + read) ÷ null ioctl, both through iommufs;
- with core's emulator: IOMMU_IOAS_MAP of 4 KiB at a fixed IOVA ÷ null
  ioctl (core's target <= 1.3), and ÷ the same IOAS_MAP served by the C
  floor server (scripts/floor_llsrv.c: the FUSE request and the copies in
  and back, no rule): goal <= 1.2.

Server and client are pinned to one CPU (``taskset -c CPU``): this kind of
VM is slow and noisy at waking a process on another CPU (fuse-notes §0), so
pinned figures measure CPU cost. Each figure is the median of ROUNDS
interleaved rounds of N calls from a C client (tests/c/bench_transport_client.c).
Run as root:

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

def build(tmp):
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    srv = os.path.join(tmp, "null_llsrv")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", srv, os.path.join(ROOT, "scripts", "null_llsrv.c"),
                    *flags], check=True)
    cli = os.path.join(tmp, "bench_transport_client")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", cli,
                    os.path.join(ROOT, "tests", "c", "bench_transport_client.c")], check=True)
    return srv, cli


def build_floor(tmp):
    """Compile scripts/floor_llsrv.c (the C floor of IOAS_MAP and of the
    fault round trip) into ``tmp``; returns its path."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    srv = os.path.join(tmp, "floor_llsrv")
    subprocess.run(["gcc", "-O2", "-Wall", "-I", os.path.join(ROOT, "tests", "c"), "-o", srv,
                    os.path.join(ROOT, "scripts", "floor_llsrv.c"), *flags], check=True)
    return srv


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
        c_mnt, py_mnt, f_mnt = (os.path.join(tmp, d) for d in ("c", "py", "floor"))
        for d in (c_mnt, py_mnt, f_mnt):
            os.mkdir(d)
        c_proc = subprocess.Popen(["taskset", "-c", args.cpu, srv, c_mnt])
        procs.append((c_mnt, c_proc))
        wait_mounted(c_mnt, c_proc)
        if not args.emulator:
            f_proc = subprocess.Popen(["taskset", "-c", args.cpu, build_floor(tmp), f_mnt])
            procs.append((f_mnt, f_proc))
            wait_mounted(f_mnt, f_proc)
        cmd = ["taskset", "-c", args.cpu, sys.executable, "-m", "devfs.cli", "mount", py_mnt,
               "--foreground"]
        if args.emulator:
            cmd += ["--emulator", args.emulator]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
        py_proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        procs.append((py_mnt, py_proc))
        wait_mounted(py_mnt, py_proc)

        c_null, py_null, py_frame, py_map, f_map = [], [], [], [], []
        c_cpu, py_cpu = [], []
        # Interleave the servers round by round: the VM's speed drifts.
        for _ in range(args.rounds):
            c_null += measure(cli, args.cpu, "ioctl", c_mnt + "/iommu", args.n, 1, c_proc.pid, c_cpu)
            py_null += measure(cli, args.cpu, "ioctl", py_mnt + "/iommu", args.n, 1, py_proc.pid, py_cpu)
            py_frame += measure(cli, args.cpu, "frame", py_mnt + "/iommu", args.n, 1)
            if not args.emulator:
                py_map += measure(cli, args.cpu, "map", py_mnt + "/iommu", args.n // 4, 1)
                f_map += measure(cli, args.cpu, "map", f_mnt + "/iommu", args.n // 4, 1)
        med = statistics.median
        print(f"pinned to CPU {args.cpu}; median of {args.rounds} rounds of {args.n} calls (µs per call)")
        print(f"  null ioctl, C libfuse server     {med(c_null):8.2f}   rounds {c_null}")
        print(f"  null ioctl, iommufs              {med(py_null):8.2f}   rounds {py_null}")
        print(f"  null frame write+read, iommufs   {med(py_frame):8.2f}")
        print(f"  server CPU per null ioctl: C {med(c_cpu):.2f}, iommufs {med(py_cpu):.2f} "
              f"(µs, user+sys, 10 ms ticks)")
        if py_map:
            print(f"  IOAS_MAP 4 KiB fixed, iommufs    {med(py_map):8.2f}")
            print(f"  IOAS_MAP 4 KiB fixed, C floor    {med(f_map):8.2f}")
        print("ratios")
        print(f"  iommufs null ioctl / C null ioctl   {med(py_null) / med(c_null):5.2f}   (target <= 1.5)")
        print(f"  null frame / null ioctl (iommufs)   {med(py_frame) / med(py_null):5.2f}")
        if py_map:
            print(f"  IOAS_MAP 4 KiB / null ioctl         {med(py_map) / med(py_null):5.2f}   (target <= 1.3)")
            print(f"  IOAS_MAP 4 KiB / C floor's          {med(py_map) / med(f_map):5.2f}   (goal <= 1.2)")
    finally:
        for path, proc in reversed(procs):
            stop(path, proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
