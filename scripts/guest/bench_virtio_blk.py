#!/usr/bin/env python3
"""The test guest's sequential read throughput of a virtio-blk disk, per
variant of where the device lives, and the ratio passthrough ÷ emulated.

    scripts/guest/bench_virtio_blk.py [--size-mib 128] [--runs 3]
    scripts/guest/bench_virtio_blk.py --topology T.toml --bdf BDF   # + passthrough

Variants:
  emulated     QEMU's own virtio-blk-pci on the image (the baseline).
  passthrough  the iommufs `virtio-blk` model on the same image, passed to
               the same guest by `-object iommufd -device vfio-pci,host=BDF`
               with QEMU under `iommufs run --topology T`. Runs when --topology
               (a topology file whose virtio-blk device has disk = "@IMAGE@",
               replaced here by the image's path) and --bdf are given.

Each run boots the guest once; /init times `dd if=/dev/vda of=/dev/null
iflag=direct` over the whole disk (iommufs.read, iommufs.readbs) and reports
IOMMUFS-READ-MBPS. The median of the runs is the figure.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import boot  # noqa: E402


def emulated(image, args, workdir):
    """(device args, wrapper) of the baseline: QEMU's own virtio-blk-pci."""
    return boot.disk_args(image), []


def passthrough(image, args, workdir):
    """(device args, wrapper) of the iommufs variant, or None when not asked.

    The topology is the caller's until the virtio-blk model's topology keys
    settle; only the image path is filled in here."""
    if not (args.topology and args.bdf):
        return None
    with open(args.topology) as f:
        text = f.read().replace("@IMAGE@", image)
    topo = os.path.join(workdir, "topology.toml")
    with open(topo, "w") as f:
        f.write(text)
    iommufs = args.iommufs or os.path.join(ROOT, ".venv", "bin", "iommufs")
    return boot.vfio_args(args.bdf), [iommufs, "run", "--topology", topo, "--"]


VARIANTS = [("emulated", emulated), ("passthrough", passthrough)]


def measure(device_args, wrapper, runs, readbs, timeout, log_dir, name):
    """MB/s of each run, and the boot results (for timings and logs)."""
    figures, results = [], []
    for i in range(runs):
        r = boot.boot(device_args, wrapper=wrapper, timeout=timeout,
                      append=["iommufs.sha=0", "iommufs.hwrng=0", "iommufs.readbs=" + readbs],
                      log_path=os.path.join(log_dir, "%s-%d.log" % (name, i)))
        line = r.value("READ-MBPS")
        if not r.done or line is None:
            raise SystemExit("%s run %d failed (rc %s, timed out %s); console %s:\n%s"
                             % (name, i, r.returncode, r.timed_out, r.log_path, r.tail()))
        figures.append(float(line.split()[0]))
        results.append(r)
    return figures, results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--readbs", default="1M", help="dd block size in the guest")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--topology", help="iommufs topology for the passthrough variant")
    ap.add_argument("--bdf", help="the passed-through device's BDF in that topology")
    ap.add_argument("--iommufs", help="iommufs command (default: .venv/bin/iommufs)")
    ap.add_argument("--keep", action="store_true", help="keep the image and console logs")
    args = ap.parse_args(argv)

    try:
        art = boot.artifacts()
    except boot.GuestNotInstalled as e:
        print("bench_virtio_blk: %s" % e, file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="iommufs-bench-blk-")
    image = os.path.join(workdir, "disk.img")
    with open(image, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1 << 20))
    print("guest: %s, %s; image %d MiB; %s; %d run(s) per variant"
          % (art.manifest["kernel_package"], art.manifest["kernel_version"], args.size_mib,
             os.environ.get("IOMMUFS_GUEST_ACCEL", "tcg"), args.runs))
    medians = {}
    try:
        for name, variant in VARIANTS:
            setup = variant(image, args, workdir)
            if setup is None:
                print("%-12s skipped (needs --topology and --bdf)" % name)
                continue
            figures, results = measure(setup[0], setup[1], args.runs, args.readbs,
                                       args.timeout, workdir, name)
            medians[name] = statistics.median(figures)
            boots = statistics.median(r.to_init for r in results)
            print("%-12s %8.1f MB/s  (runs: %s; boot to /init %.2fs)"
                  % (name, medians[name], ", ".join("%.1f" % x for x in figures), boots))
        if "emulated" in medians and "passthrough" in medians:
            print("ratio passthrough/emulated: %.2f (goal >= 0.5)"
                  % (medians["passthrough"] / medians["emulated"]))
    finally:
        if args.keep:
            print("kept", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
