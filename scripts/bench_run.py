#!/usr/bin/env python3
"""``iommufs run`` benchmark: what the namespace and the preload shim cost per
ioctl. Prints, from one run, µs per call and ratios of:

- ioctl() on /dev/iommu inside ``iommufs run`` (bind mount, shim loaded);
- the same ioctl() on ``<mnt>/iommu`` from a plain process (no shim);
- the raw frame protocol: write() of a request frame + read() of the reply
  on ``<mnt>/iommu`` (README, "Frames"), no shim;

for IOMMUFS_NULL (the transport alone) and IOMMU_OPTION GET RLIMIT_MODE (a
real ioctl through core's dispatch), and the open + IOAS_ALLOC + close cycle
with and without the shim (the shim's close waits for IOMMUFS_SYNC_CLOSE).

Server and clients are pinned to one CPU (``taskset -c CPU``; fuse-notes §0:
this kind of VM is slow and noisy at cross-CPU wake-ups); each figure is the
median of ROUNDS interleaved rounds of N calls from a C client
(tests/c/bench_run_client.c). Run as root:

    python3 scripts/bench_run.py [-n 20000] [--rounds 5] [--cpu 0]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_transport import stop  # noqa: E402

def build(tmp):
    cli = os.path.join(tmp, "bench_run_client")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", cli,
                    os.path.join(ROOT, "tests", "c", "bench_run_client.c")], check=True)
    return cli


def start_server(mnt, cpu):
    """An iommufs (core's emulator) on ``mnt``, pinned to ``cpu``."""
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-m", "devfs.cli", "mount",
                             mnt, "--foreground", "--ready-fd", str(w)],
                            cwd=ROOT, env=env, pass_fds=(w,), stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        if f.readline().strip() != "ready":
            proc.wait()
            raise SystemExit(f"server did not mount {mnt} (rc {proc.returncode})")
    return proc


def measure(cmd, n):
    """µs per call printed by the client command ``cmd`` (one round)."""
    out = subprocess.run(cmd + [str(n), "1"], check=True, capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    return [float(x) for x in out.split()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20000, help="calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", default="0", help="the CPU the server and the clients are pinned to")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="iommufs-bench-run-")
    os.chmod(tmp, 0o755)
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    proc = None
    try:
        cli = build(tmp)
        proc = start_server(mnt, args.cpu)
        pin = ["taskset", "-c", args.cpu]
        run = [sys.executable, "-m", "devfs.cli", "run", "--mount", mnt, "--"]
        node = os.path.join(mnt, "iommu")
        kinds = {
            "null": {"run": run + pin + [cli, "ioctl-null", "/dev/iommu"],
                     "plain": pin + [cli, "ioctl-null", node],
                     "frame": pin + [cli, "frame-null", node]},
            "option": {"run": run + pin + [cli, "ioctl-option", "/dev/iommu"],
                       "plain": pin + [cli, "ioctl-option", node],
                       "frame": pin + [cli, "frame-option", node]},
            "cycle": {"run": run + pin + [cli, "cycle", "/dev/iommu"],
                      "plain": pin + [cli, "cycle", node]},
        }
        got = {k: {w: [] for w in v} for k, v in kinds.items()}
        # Interleaved round by round: the VM's speed drifts.
        for _ in range(args.rounds):
            for k, ways in kinds.items():
                n = args.n if k != "cycle" else max(args.n // 20, 50)
                for w, cmd in ways.items():
                    got[k][w] += measure(cmd, n)
        med = {k: {w: statistics.median(v) for w, v in ws.items()} for k, ws in got.items()}
        print(f"pinned to CPU {args.cpu}; median of {args.rounds} rounds of {args.n} calls "
              f"({max(args.n // 20, 50)} open/close cycles); µs per call")
        names = {"run": "ioctl, iommufs run + shim", "plain": "ioctl on the mount, no shim",
                 "frame": "frame write+read, no shim"}
        for k, title in (("null", "IOMMUFS_NULL"), ("option", "IOMMU_OPTION GET")):
            for w in ("run", "plain", "frame"):
                print(f"  {title:17s} {names[w]:30s} {med[k][w]:8.2f}")
        print(f"  {'open+ALLOC+close':17s} {'iommufs run + shim (sync close)':30s} "
              f"{med['cycle']['run']:8.2f}")
        print(f"  {'open+ALLOC+close':17s} {'on the mount, no shim':30s} {med['cycle']['plain']:8.2f}")
        print("ratios")
        for k, title in (("null", "IOMMUFS_NULL"), ("option", "IOMMU_OPTION GET")):
            print(f"  {title}: run+shim / plain ioctl {med[k]['run'] / med[k]['plain']:5.2f}, "
                  f"run+shim / frame {med[k]['run'] / med[k]['frame']:5.2f}, "
                  f"frame / plain ioctl {med[k]['frame'] / med[k]['plain']:5.2f}")
        print(f"  open+ALLOC+close: run+shim / plain {med['cycle']['run'] / med['cycle']['plain']:5.2f}")
    finally:
        if proc is not None:
            stop(mnt, proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
