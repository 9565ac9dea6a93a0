#!/usr/bin/env python3
"""Soak benchmark (issue 8): many clients, mixed ioctls, several rounds.

Each round runs CLIENTS client processes at once against one server (core's
emulator, built-in topology). Each client makes OPS ioctls in a fixed mix:
open and close of contexts (every 250 ops), IOAS_ALLOC, IOAS_MAP of a
64 KiB buffer at a fixed IOVA, IOAS_IOVA_RANGES, IOAS_UNMAP, IOMMU_DESTROY.
Printed per round: unexpected errors (must be 0), ioctls per second over all
clients, and the server's RSS after the round (must stay flat: no leak).

    python3 scripts/bench_soak.py [--clients 16] [--ops 10000] [--rounds 3]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLIENT = """
import sys, time
from devfs.client import Buffer, Iommufd
mnt, ops = sys.argv[1], int(sys.argv[2])
buf = Buffer(64 << 10)
errors, done = 0, 0
fd = None
sys.stdin.readline()                   # start together
t0 = time.monotonic()
while done < ops:
    try:
        if fd is None or done % 250 == 0:
            if fd is not None:
                fd.close()
            fd = Iommufd(mnt)
            done += 1                  # the open is a request too (FUSE_OPEN)
        ioas = fd.ioas_alloc()
        fd.ioas_map(ioas, buf.va, len(buf), iova=0x100000)
        ranges, _ = fd.iova_ranges(ioas)
        assert ranges, "no IOVA ranges"
        assert fd.ioas_unmap(ioas, 0x100000, len(buf)) == len(buf)
        fd.destroy(ioas)
        done += 5
    except (OSError, AssertionError) as e:
        errors += 1
        done += 1
        print("unexpected:", repr(e), file=sys.stderr)
fd.close()
print(errors, done, time.monotonic() - t0)
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--ops", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from devfs.session import mount_fstype

    mnt = tempfile.mkdtemp(prefix="iommufs-soak-")
    env = dict(os.environ, PYTHONPATH=ROOT)
    srv = subprocess.Popen([sys.executable, "-m", "devfs.cli", "mount", mnt, "--foreground"],
                           cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        while mount_fstype(mnt) is None:
            if srv.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"server did not mount: {srv.stderr.read().decode()}")
            time.sleep(0.01)
        print(f"{args.clients} clients x {args.ops} ioctls, {args.rounds} rounds; "
              f"server RSS at start {rss_kib(srv.pid)} KiB")
        total_errors = 0
        rss = []
        for rnd in range(1, args.rounds + 1):
            procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT), mnt, str(args.ops)],
                                      env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
                     for _ in range(args.clients)]
            time.sleep(1.0)            # let every interpreter start before the clock runs
            t0 = time.monotonic()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            errors = ops = 0
            for p in procs:
                out, err = p.communicate(timeout=600)
                if p.returncode != 0 or not out.strip():
                    errors += 1
                    sys.stderr.write(err)
                    continue
                e, n, _ = out.split()
                errors += int(e)
                ops += int(n)
                if int(e):
                    sys.stderr.write(err[:2000])
            wall = time.monotonic() - t0
            time.sleep(0.5)            # releases are asynchronous: let them land
            rss.append(rss_kib(srv.pid))
            total_errors += errors
            print(f"round {rnd}: unexpected errors {errors}, {ops / wall:,.0f} ioctls/s "
                  f"({ops} in {wall:.1f} s), server RSS {rss[-1]} KiB")
        growth = rss[-1] - rss[0]
        print(f"unexpected errors in all: {total_errors}; RSS round 1 -> {args.rounds}: "
              f"{rss[0]} -> {rss[-1]} KiB ({growth:+d} KiB)")
        if srv.poll() is not None:
            print("the server died:", srv.stderr.read().decode())
            return 1
        return 1 if total_errors else 0
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
        os.rmdir(mnt)


if __name__ == "__main__":
    sys.exit(main())
