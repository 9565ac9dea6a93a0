#!/usr/bin/env python3
"""Copy a guest kernel and the virtio modules it needs out of an unpacked
Debian linux-image package into the guest cache, and write manifest.json.

Called by scripts/guest/install.sh after `dpkg-deb -x`; usable by hand:

    extract_kernel.py --root UNPACKED --out CACHE --package NAME --version VER
"""
import argparse
import glob
import json
import lzma
import os
import shutil
import struct
import sys

# What the guest's /init drives: PCI transport, block and entropy devices.
# Their dependencies come from modules.dep, so a kernel that splits or merges
# helper modules (virtio_pci_modern_dev, rng-core, ...) still works.
WANTED = ["virtio_pci", "virtio_blk", "virtio_rng"]


def norm(name):
    """Module name as the kernel compares it: '-' and '_' are the same."""
    return name.replace("-", "_")


def module_name(path):
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            return norm(base[: -len(ext)])
    raise ValueError(path)


def open_module(path):
    """A module file's bytes, decompressed."""
    if path.endswith(".ko.xz"):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith(".ko.gz"):
        import gzip
        with gzip.open(path) as f:
            return f.read()
    if path.endswith(".ko.zst"):
        import subprocess
        return subprocess.run(["zstd", "-q", "-d", "-c", path], check=True,
                              stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


def modinfo_depends(elf):
    """The 'depends=' entry of an ELF64 module's .modinfo section.

    Read here rather than from modules.dep because the package ships no
    modules.dep (its postinst runs depmod) and the host may have no kmod."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("not an ELF64 module")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3a)

    def section(i):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name:end] == b".modinfo":
            for entry in elf[off:off + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    value = entry[len(b"depends="):].decode()
                    return [norm(d) for d in value.split(",") if d]
            return []
    return []


def read_dep(moddir):
    """Map module name -> (relative path, [dependency names])."""
    deps = {}
    for dirpath, _, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            if ".ko" not in f:
                continue
            path = os.path.join(dirpath, f)
            deps[module_name(f)] = (os.path.relpath(path, moddir), None)
    return deps


def read_builtin(moddir):
    names = set()
    path = os.path.join(moddir, "modules.builtin")
    if os.path.exists(path):
        with open(path) as f:
            names = {module_name(line.strip()) for line in f if line.strip()}
    return names


def load_order(wanted, deps, builtin, moddir):
    """Modules to insmod, dependencies first; built-in ones are skipped."""
    order, seen = [], set()

    def visit(name):
        if name in seen or name in builtin:
            return
        if name not in deps:
            raise SystemExit("module %s is neither built in nor shipped" % name)
        seen.add(name)
        for dep in modinfo_depends(open_module(os.path.join(moddir, deps[name][0]))):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(norm(name))
    return order


def copy_module(src, dst_dir):
    """Copy one module, decompressed: busybox insmod hands the bytes to
    init_module(), which takes only a plain ELF."""
    name = module_name(src) + ".ko"
    with open(os.path.join(dst_dir, name), "wb") as f:
        f.write(open_module(src))
    return name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="dpkg-deb -x output")
    ap.add_argument("--out", required=True, help="guest cache directory")
    ap.add_argument("--package", required=True)
    ap.add_argument("--version", required=True)
    args = ap.parse_args(argv)

    moddirs = glob.glob(os.path.join(args.root, "lib/modules/*")) + \
        glob.glob(os.path.join(args.root, "usr/lib/modules/*"))
    vmlinuz = glob.glob(os.path.join(args.root, "boot/vmlinuz-*"))
    if len(moddirs) != 1 or len(vmlinuz) != 1:
        sys.exit("unexpected package layout: %s %s" % (moddirs, vmlinuz))
    moddir = moddirs[0]
    kver = os.path.basename(moddir)
    deps = read_dep(moddir)
    order = load_order(WANTED, deps, read_builtin(moddir), moddir)

    # Replace the previous kernel's files only once the new set is complete.
    os.makedirs(args.out, exist_ok=True)
    stage = os.path.join(args.out, ".kernel.new")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(os.path.join(stage, "modules"))
    shutil.copyfile(vmlinuz[0], os.path.join(stage, "vmlinuz"))
    files = [copy_module(os.path.join(moddir, deps[n][0]), os.path.join(stage, "modules"))
             for n in order]
    manifest = {
        "kernel_package": args.package,
        "kernel_version": args.version,
        "kernel_release": kver,
        "vmlinuz": "kernel/vmlinuz",
        "modules": ["kernel/modules/" + f for f in files],
    }
    final = os.path.join(args.out, "kernel")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(stage, final)
    tmp = os.path.join(args.out, "manifest.json.new")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out, "manifest.json"))
    print("kernel %s: modules %s" % (kver, " ".join(order)))


if __name__ == "__main__":
    main()
