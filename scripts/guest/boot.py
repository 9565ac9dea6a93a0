#!/usr/bin/env python3
"""Boot the iommufs test guest in QEMU and collect what its /init reports.

The guest is a Debian kernel plus a busybox initramfs (scripts/guest/init.sh)
that checks the first virtio disk, reads /dev/hwrng, lists PCI devices and
powers off, printing ``IOMMUFS-<KEY> <values>`` lines on the serial console.
Which devices the guest gets is the caller's choice of QEMU ``-device``
arguments, so QEMU's own emulated virtio devices and a device passed through
from iommufs (``vfio_args``) boot the same guest.

As a library (tests import it)::

    import boot
    r = boot.boot(boot.disk_args("disk.img") + boot.rng_args(),
                  append=["iommufs.write=2049:a5"])
    r.value("DISK-SHA256")      # "<hex> <bytes>"

As a command::

    scripts/guest/boot.py --disk disk.img --rng --write 2049:a5
    scripts/guest/boot.py --wrap '.venv/bin/iommufs run --' --vfio 0000:00:03.0

TCG is the default accelerator: a Linux guest may hang under KVM on the
machines this runs on. ``--accel kvm`` or IOMMUFS_GUEST_ACCEL=kvm opts in.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import build_initramfs  # noqa: E402

DEFAULT_CACHE = build_initramfs.DEFAULT_CACHE
QEMU = os.environ.get("IOMMUFS_GUEST_QEMU", "qemu-system-x86_64")
QEMU_MIN_MAJOR = 10
INSTALL_HINT = "run `bash scripts/setup.sh install` (or scripts/guest/install.sh) as root"


class GuestNotInstalled(Exception):
    """The kernel, initramfs inputs or QEMU that boot() needs are missing."""


class Artifacts:
    """Paths of the guest kernel and initramfs, and the installed versions."""

    def __init__(self, cache, manifest, initrd):
        self.cache = cache
        self.manifest = manifest
        self.kernel = os.path.join(cache, manifest["vmlinuz"])
        self.initrd = initrd

    def __repr__(self):
        return "Artifacts(kernel=%r, initrd=%r)" % (self.kernel, self.initrd)


def qemu_version(qemu=QEMU):
    """(major, minor, micro) of the QEMU binary, or None if it does not run."""
    try:
        out = subprocess.run([qemu, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    words = out.split()
    ver = words[words.index("version") + 1] if "version" in words else ""
    try:
        return tuple(int(x) for x in ver.split(".")[:3])
    except ValueError:
        return None


def artifacts(cache=None, qemu=QEMU):
    """Locate (and, if its inputs changed, rebuild) the guest's kernel and
    initramfs. Raises GuestNotInstalled with the reason and the fix."""
    cache = cache or DEFAULT_CACHE
    manifest = build_initramfs.load_manifest(cache)
    if manifest is None:
        raise GuestNotInstalled("no guest kernel in %s: %s" % (cache, INSTALL_HINT))
    ver = qemu_version(qemu)
    if ver is None or ver[0] < QEMU_MIN_MAJOR:
        raise GuestNotInstalled("%s %s is not QEMU >= %d.0: %s"
                                % (qemu, ".".join(map(str, ver or ())) or "missing",
                                   QEMU_MIN_MAJOR, INSTALL_HINT))
    try:
        initrd = build_initramfs.build(cache, if_stale=True)
    except PermissionError:
        # A non-root user cannot write the cache: build a private copy.
        out = os.path.join(tempfile.gettempdir(), "iommufs-guest-%d.cpio.gz" % os.getuid())
        initrd = build_initramfs.build(cache, out=out, if_stale=True)
    except SystemExit as e:
        raise GuestNotInstalled("%s (%s)" % (e, INSTALL_HINT))
    return Artifacts(cache, manifest, initrd)


def disk_args(image, *, node="disk0", readonly=False, extra=""):
    """QEMU's own modern-only virtio-blk-pci (1af4:1042) on a raw image.

    disable-legacy: on q35's root bus QEMU would otherwise present the
    transitional ID 1af4:1001, not what an iommufs device shows."""
    drive = "file=%s,if=none,id=%s,format=raw%s" % (image, node, ",readonly=on" if readonly else "")
    return ["-drive", drive + extra,
            "-device", "virtio-blk-pci,drive=%s,disable-legacy=on" % node]


def rng_args(node="rng0"):
    """QEMU's own modern-only virtio-rng-pci (1af4:1044)."""
    return ["-device", "virtio-rng-pci,id=%s,disable-legacy=on" % node]


def vfio_args(host=None, *, iommufd="i0", fd=None, sysfsdev=None, extra=""):
    """An iommufd-backed vfio-pci device: the passthrough counterpart of
    disk_args()/rng_args(), for QEMU run under `iommufs run`. One iommufd
    object is shared by every device that names the same id; pass
    iommufd=None for the second and later devices of one QEMU."""
    args = []
    if iommufd is not None:
        args += ["-object", "iommufd,id=%s" % iommufd]
    dev = "vfio-pci,iommufd=%s" % (iommufd or "i0")
    if host:
        dev += ",host=" + host
    elif sysfsdev:
        dev += ",sysfsdev=" + sysfsdev
    elif fd is not None:
        dev += ",fd=%d" % fd
    else:
        raise ValueError("vfio_args needs host, sysfsdev or fd")
    return args + ["-device", dev + extra]


def qemu_command(device_args, *, append=(), art=None, accel=None, memory=512, smp=1,
                 qemu=QEMU, extra=()):
    """The QEMU command line that boots the test guest with device_args."""
    art = art or artifacts(qemu=qemu)
    accel = accel or os.environ.get("IOMMUFS_GUEST_ACCEL", "tcg")
    # quiet keeps the console to our lines and warnings; panic=-1 with
    # -no-reboot turns a guest panic into a QEMU exit instead of a hang.
    cmdline = ["console=ttyS0", "quiet", "panic=-1"] + list(append)
    cmd = [qemu, "-M", "q35", "-accel", accel, "-m", str(memory), "-smp", str(smp),
           "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot",
           "-kernel", art.kernel, "-initrd", art.initrd, "-append", " ".join(cmdline)]
    if accel == "kvm":
        cmd += ["-cpu", "host"]
    return cmd + list(extra) + list(device_args)


class BootResult:
    """What one boot produced: the IOMMUFS-* marker lines, the whole console
    (and QEMU's stderr) in log_path, timings and how QEMU ended."""

    def __init__(self, cmd, log_path):
        self.cmd = cmd
        self.log_path = log_path
        self.lines = []
        self.markers = []           # (key, value) in console order
        self.pid = None             # QEMU's (or the wrapper's) pid, reaped on return
        self.returncode = None
        self.timed_out = False
        self.elapsed = None         # seconds from spawn to QEMU's exit
        self.to_init = None         # seconds from spawn to the guest's /init
        self.to_done = None         # seconds from spawn to the IOMMUFS-DONE line

    def values(self, key):
        """Every value reported under KEY, in order."""
        return [v for k, v in self.markers if k == key]

    def value(self, key, default=None):
        """The first value reported under KEY."""
        vals = self.values(key)
        return vals[0] if vals else default

    @property
    def done(self):
        """True if /init got to the end (it prints DONE just before poweroff)."""
        return bool(self.values("DONE"))

    def pci(self):
        """The guest's PCI devices as dicts: bdf, id ("vvvv:dddd"), class, driver."""
        out = []
        for v in self.values("PCI"):
            bdf, ident, *rest = v.split()
            d = {"bdf": bdf, "id": ident}
            for kv in rest:
                k, _, val = kv.partition("=")
                d[k] = val
            out.append(d)
        return out

    def tail(self, n=40):
        """The last n console lines, for assertion messages."""
        return "\n".join(self.lines[-n:])

    def summary(self):
        """A dict of the result, for printing as JSON."""
        return {"returncode": self.returncode, "timed_out": self.timed_out,
                "done": self.done, "elapsed_s": self.elapsed, "to_init_s": self.to_init,
                "to_done_s": self.to_done, "log": self.log_path,
                "markers": [[k, v] for k, v in self.markers]}


def _parse(line):
    # Kernel messages can land on the same console line; a marker is only
    # trusted at the start of a line.
    line = line.rstrip("\r\n").lstrip("\r")
    if not line.startswith("IOMMUFS-"):
        return None
    key, _, value = line[len("IOMMUFS-"):].partition(" ")
    return key, value.strip()


def boot(device_args, *, append=(), timeout=120, log_path=None, accel=None, memory=512,
         smp=1, wrapper=(), env=None, cwd=None, extra=(), echo=False, qemu=QEMU):
    """Boot the guest with device_args and return a BootResult.

    wrapper is a command prefix (e.g. ["iommufs", "run", "--"]) QEMU runs
    under. QEMU (and the wrapper's process group) is killed after timeout
    seconds; the result then has timed_out set. echo copies the console to
    stderr as it arrives."""
    art = artifacts(qemu=qemu)
    cmd = list(wrapper) + qemu_command(device_args, append=append, art=art, accel=accel,
                                       memory=memory, smp=smp, qemu=qemu, extra=extra)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="iommufs-guest-", suffix=".log")
        os.close(fd)
    res = BootResult(cmd, log_path)
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("# " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        # Its own session, so a timeout kills QEMU and whatever wrapped it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        res.pid = proc.pid

        def reader():
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                log.flush()
                if echo:
                    sys.stderr.write(line)
                res.lines.append(line.rstrip("\r\n"))
                m = _parse(line)
                if m:
                    res.markers.append(m)
                    now = time.monotonic() - start
                    if m[0] == "INIT" and res.to_init is None:
                        res.to_init = round(now, 2)
                    elif m[0] == "DONE":
                        res.to_done = round(now, 2)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            res.timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        t.join(10)
        res.elapsed = round(time.monotonic() - start, 2)
        res.returncode = proc.returncode
        if res.timed_out:
            log.write("# killed after %ss\n" % timeout)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Boot the iommufs test guest and print its report as JSON.",
        epilog="Arguments after -- are passed to QEMU as they are.")
    ap.add_argument("--disk", help="raw image for QEMU's own virtio-blk-pci")
    ap.add_argument("--readonly", action="store_true")
    ap.add_argument("--rng", action="store_true", help="add QEMU's own virtio-rng-pci")
    ap.add_argument("--vfio", action="append", default=[], metavar="BDF",
                    help="pass an iommufs device through (run QEMU under `iommufs run`)")
    ap.add_argument("--wrap", default="", help="command prefix, e.g. '.venv/bin/iommufs run --'")
    ap.add_argument("--write", metavar="SECTOR:HH", help="guest writes 512 bytes of 0xHH there")
    ap.add_argument("--append", action="append", default=[], help="more kernel parameters")
    ap.add_argument("--accel", help="tcg (default) or kvm")
    ap.add_argument("--memory", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--log", help="console log file (default: a temp file)")
    ap.add_argument("--print-cmd", action="store_true", help="print the command and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the console")
    ap.add_argument("qemu_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)

    dev = []
    if args.disk:
        dev += disk_args(args.disk, readonly=args.readonly)
    if args.rng:
        dev += rng_args()
    for i, bdf in enumerate(args.vfio):
        dev += vfio_args(bdf, iommufd="i0" if i == 0 else None)
    dev += args.qemu_args[1:] if args.qemu_args[:1] == ["--"] else args.qemu_args
    append = list(args.append)
    if args.write:
        append.append("iommufs.write=" + args.write)
    try:
        if args.print_cmd:
            print(" ".join(shlex.quote(c) for c in shlex.split(args.wrap) +
                           qemu_command(dev, append=append, accel=args.accel,
                                        memory=args.memory)))
            return 0
        r = boot(dev, append=append, timeout=args.timeout, log_path=args.log,
                 accel=args.accel, memory=args.memory, wrapper=shlex.split(args.wrap),
                 echo=args.verbose)
    except GuestNotInstalled as e:
        print("boot.py: %s" % e, file=sys.stderr)
        return 2
    for k, v in r.markers:
        print("IOMMUFS-%s %s" % (k, v))
    summary = r.summary()
    del summary["markers"]
    print(json.dumps(summary))
    return 0 if r.done and not r.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
