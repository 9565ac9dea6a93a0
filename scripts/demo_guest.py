#!/usr/bin/env python3
"""Passthrough without hardware, step by step: boot a Debian guest whose own
virtio drivers read and write a disk and read an entropy device that are
iommufs devices passed through by an unmodified QEMU.

    .venv/bin/python scripts/demo_guest.py                  # iommufs devices passed through
    .venv/bin/python scripts/demo_guest.py --emulated       # QEMU's own virtio-blk/rng
    .venv/bin/python scripts/demo_guest.py --topology T.toml --bdf BDF [--rng-bdf BDF]

By default the demo writes a topology with an iommufs virtio-blk on its image
and a virtio-rng, and QEMU runs under `iommufs run` with `-object iommufd
-device vfio-pci,iommufd=i0,host=01f5:00:03.0` (and :04.0): every DMA of
those devices goes through iommufs' IOAS translation into the guest's RAM.
--emulated is the reference run on QEMU's own devices; --topology takes your
own topology (a virtio-blk device with disk = "@IMAGE@", replaced by the
demo's image). Run as root after `bash scripts/setup.sh install`.
"""
import argparse
import hashlib
import os
import shlex
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "guest"))

import boot  # noqa: E402

SECTOR, BYTE = 2049, 0x5A

# Emulated functions appear in sysfs domain 01f5 with the topology's bus,
# device and function (docs/shim.md): 0000:00:03.0 is host=01f5:00:03.0.
DEFAULT_TOPOLOGY = """
[[device]]
name = "0000:00:03.0"
model = "virtio-blk"
disk = "@IMAGE@"

[[device]]
name = "0000:00:04.0"
model = "virtio-rng"
"""


def step(n, text):
    print("\n[%d] %s" % (n, text), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=16)
    ap.add_argument("--topology", help="iommufs topology: pass its devices through")
    ap.add_argument("--bdf", help="BDF of the iommufs virtio-blk device")
    ap.add_argument("--rng-bdf", help="BDF of the iommufs virtio-rng device")
    ap.add_argument("--emulated", action="store_true", help="QEMU's own devices instead")
    ap.add_argument("--quiet-console", action="store_true", help="do not echo the console")
    args = ap.parse_args(argv)

    step(1, "what boots the guest")
    try:
        art = boot.artifacts()
    except boot.GuestNotInstalled as e:
        print("   not installed: %s" % e)
        return 2
    print("   QEMU %s" % ".".join(map(str, boot.qemu_version())))
    print("   kernel %s %s (%s)" % (art.manifest["kernel_package"],
                                    art.manifest["kernel_version"], art.kernel))
    print("   modules: %s" % " ".join(os.path.basename(m) for m in art.manifest["modules"]))

    step(2, "the initramfs: busybox, the modules, scripts/guest/init.sh as /init")
    print("   %s (%d bytes)" % (art.initrd, os.path.getsize(art.initrd)))

    step(3, "a disk image of random bytes")
    workdir = tempfile.mkdtemp(prefix="iommufs-demo-guest-")
    image = os.path.join(workdir, "disk.img")
    data = os.urandom(args.size_mib << 20)
    with open(image, "wb") as f:
        f.write(data)
    print("   %s, %d MiB, sha256 %s" % (image, args.size_mib, hashlib.sha256(data).hexdigest()))

    step(4, "the guest's devices")
    wrapper = []
    if not args.topology and not args.emulated:
        args.topology = os.path.join(workdir, "default.toml")
        with open(args.topology, "w") as f:
            f.write(DEFAULT_TOPOLOGY)
        args.bdf, args.rng_bdf = "01f5:00:03.0", "01f5:00:04.0"
        print("   a topology with an iommufs virtio-blk on the image and a virtio-rng:")
        print("   " + DEFAULT_TOPOLOGY.strip().replace("\n", "\n   "))
    if args.topology:
        if not args.bdf:
            ap.error("--topology needs --bdf")
        with open(args.topology) as f:
            topo_text = f.read().replace("@IMAGE@", image)
        topo = os.path.join(workdir, "topology.toml")
        with open(topo, "w") as f:
            f.write(topo_text)
        wrapper = [os.path.join(ROOT, ".venv", "bin", "iommufs"), "run", "--topology", topo, "--"]
        dev = boot.vfio_args(args.bdf)
        if args.rng_bdf:
            dev += boot.vfio_args(args.rng_bdf, iommufd=None)
        print("   iommufs devices passed through (QEMU under `iommufs run`)")
    else:
        dev = boot.disk_args(image) + boot.rng_args()
        print("   QEMU's own virtio-blk-pci and virtio-rng-pci")
    append = ["iommufs.write=%d:%02x" % (SECTOR, BYTE)]

    step(5, "the command")
    cmd = wrapper + boot.qemu_command(dev, append=append, art=art)
    print("   " + " ".join(shlex.quote(c) for c in cmd))

    step(6, "boot (serial console follows)")
    log = os.path.join(workdir, "console.log")
    r = boot.boot(dev, append=append, wrapper=wrapper, timeout=180, log_path=log,
                  echo=not args.quiet_console)
    print("   QEMU exited %s after %.2fs (guest /init at %.2fs); console in %s"
          % (r.returncode, r.elapsed, r.to_init or -1, log))
    if not r.done:
        print("   the guest did not finish:\n" + r.tail())
        return 1

    step(7, "what the guest saw, checked on the host")
    ok = True

    def check(cond, text):
        nonlocal ok
        ok &= bool(cond)
        print("   %s %s" % ("ok  " if cond else "FAIL", text))

    guest_sha = (r.value("DISK-SHA256") or "").split()[:1]
    check(guest_sha == [hashlib.sha256(data).hexdigest()],
          "guest's sha256 of /dev/vda equals the image's")
    with open(image, "rb") as f:
        f.seek(SECTOR * 512)
        check(f.read(512) == bytes([BYTE]) * 512,
              "the block the guest wrote at sector %d is in the image file" % SECTOR)
    rng = r.value("HWRNG")
    check(rng and any(bytes.fromhex(rng)), "/dev/hwrng gave %s" % (rng or "nothing")[:32] + "…")
    for d in r.pci():
        if d["id"].startswith("1af4:"):
            print("   guest PCI %s %s driver %s" % (d["bdf"], d["id"], d["driver"]))
    print("   guest O_DIRECT read: %s MB/s" % (r.value("READ-MBPS") or "?").split()[0])
    print("\n%s (files in %s)" % ("all good" if ok else "FAILED", workdir))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
