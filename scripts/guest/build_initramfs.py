#!/usr/bin/env python3
"""Build the test guest's initramfs (a gzipped newc cpio): static busybox,
scripts/guest/init.sh as /init, and the virtio modules that install.sh
extracted, loaded in dependency order.

    build_initramfs.py [--cache DIR] [--out FILE] [--if-stale]

The archive is written by this script rather than by cpio(1) so that no extra
tool is needed and device nodes (/dev/console) can be packed without mknod.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.environ.get("IOMMUFS_GUEST_CACHE", "/var/cache/iommufs-guest")
INIT = os.path.join(HERE, "init.sh")


class Cpio:
    """A newc ("070701") archive writer, enough for an initramfs."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(name_b)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self):
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name):
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def load_manifest(cache):
    """The cache's manifest.json (written by install.sh), or None."""
    path = os.path.join(cache, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def busybox_path():
    """The static busybox binary: a dynamic one would not run in the guest."""
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    raise SystemExit("busybox not found: run scripts/guest/install.sh")


def inputs(cache):
    """(archive name, host path) of every file packed, in order."""
    manifest = load_manifest(cache)
    if manifest is None:
        raise SystemExit("no %s/manifest.json: run scripts/guest/install.sh" % cache)
    files = [("init", INIT), ("bin/busybox", busybox_path())]
    for rel in manifest["modules"]:
        files.append(("lib/modules/" + os.path.basename(rel), os.path.join(cache, rel)))
    return manifest, files


def fingerprint(files):
    """Hash of everything that goes into the archive, this builder included."""
    h = hashlib.sha256()
    for name, path in files + [("builder", os.path.abspath(__file__))]:
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def build(cache=DEFAULT_CACHE, out=None, if_stale=False):
    """Write the initramfs and return its path; with if_stale, reuse an
    existing one built from the same inputs."""
    manifest, files = inputs(cache)
    out = out or os.path.join(cache, "initramfs.cpio.gz")
    key = fingerprint(files)
    keyfile = out + ".key"
    if if_stale and os.path.exists(out) and os.path.exists(keyfile):
        with open(keyfile) as f:
            if f.read().strip() == key:
                return out
    a = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        a.dir(d)
    # The kernel opens /dev/console for init's stdio before /init runs, so
    # the node must be in the archive; devtmpfs is mounted over it later.
    a.chardev("dev/console", 5, 1)
    a.symlink("bin/sh", "busybox")
    order = []
    for name, path in files:
        with open(path, "rb") as f:
            data = f.read()
        executable = name in ("init", "bin/busybox")
        a.file(name, data, 0o755 if executable else 0o644)
        if name.startswith("lib/modules/"):
            order.append(os.path.basename(name))
    a.file("lib/modules/load-order", ("\n".join(order) + "\n").encode())
    tmp = out + ".new"
    with open(tmp, "wb") as f:
        # mtime=0: the same inputs give the same bytes.
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as g:
            g.write(a.finish())
    os.replace(tmp, out)
    with open(keyfile, "w") as f:
        f.write(key + "\n")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--out", help="default: CACHE/initramfs.cpio.gz")
    ap.add_argument("--if-stale", action="store_true",
                    help="keep an existing archive built from the same inputs")
    args = ap.parse_args(argv)
    print(build(args.cache, args.out, args.if_stale))


if __name__ == "__main__":
    sys.exit(main())
