"""The sysfs view of ``iommufs run``: emulated PCI functions under
``/sys/bus/pci/devices`` beside the host's (issue 10, item 6).

VMMs and userspace drivers find a VFIO device through sysfs: QEMU's
``-device vfio-pci,host=BDF`` (or ``sysfsdev=PATH``) lists
``<dev>/vfio-dev/`` for the ``vfioN`` entry and checks that
``/dev/vfio/devices/vfioN`` is a character device whose numbers equal those
in ``<dev>/vfio-dev/vfioN/dev``; the kernel's VFIO selftests read
``vendor``, ``device`` and ``iommu_group``; DPDK reads ``class``,
``numa_node``, ``resource`` and the ``driver`` link (reference
vfio-device.md §8.1, §9.1, §12).

How the view is built, in the program's private mount namespace (the host's
sysfs is never written): a tmpfs covers ``/sys/bus/pci/devices``; every host
entry there (each a symlink into ``/sys/devices/...``) is re-created as the
same symlink, so the host's devices are all still there; each emulated
function is a directory of plain files. Its ``driver`` names vfio-pci and
its ``iommu_group`` points into ``.iommufs/iommu_groups/N`` inside the same
tmpfs (the link's basename is the group number, which is what its readers
take).

Emulated functions sit in a PCI domain of their own (core.topology's
SYSFS_DOMAIN, ``0x01f5``; each ``info`` names the function's ``sysfs``
BDF), keeping bus, device and function from the topology: a
topology's ``0000:00:03.0`` shows as ``01f5:00:03.0``. Hosts use domain 0
(and a few more on large machines), so the built-in topology's BDFs, which
clash with typical hosts' (``0000:00:03.0`` is often a host NIC), never
collide; if the host has a device of that name all the same, the view is
refused (EEXIST) rather than shadowing it.
"""
import errno
import json
import os

PCI_DEVICES = "/sys/bus/pci/devices"
GROUPS_DIR = ".iommufs/iommu_groups"
#: Device numbers the preload shim reports for /dev/vfio/devices/vfioN
#: (cext/preload.c: VFIO_DEV_MAJOR, minor N).
VFIO_DEV_MAJOR = 511


def device_files(info):
    """The files of one emulated function's sysfs directory, from its
    ``info`` document: ``{relative path: bytes}``, plus symlinks as
    ``{relative path: ("link", target)}``. ``info`` needs ``vfio``
    (``vfio/devices/vfioN``), ``vendor``, ``device``, ``group``; it may give
    ``class`` (24-bit), ``subsystem_vendor``, ``subsystem_device``,
    ``revision`` (defaults: 0xff0000 "unclassified", the vendor/device IDs,
    0)."""
    vfio = os.path.basename(info["vfio"])
    if not vfio.startswith("vfio") or not vfio[4:].isdigit():
        raise ValueError(f"bad vfio node {info['vfio']!r}")
    minor = int(vfio[4:])
    vendor, device = info["vendor"], info["device"]
    sub_vendor = info.get("subsystem_vendor", vendor)
    sub_device = info.get("subsystem_device", device)
    cls = info.get("class", 0xFF0000)
    files = {
        "vendor": f"0x{vendor:04x}\n",
        "device": f"0x{device:04x}\n",
        "subsystem_vendor": f"0x{sub_vendor:04x}\n",
        "subsystem_device": f"0x{sub_device:04x}\n",
        "class": f"0x{cls:06x}\n",
        "revision": f"0x{info.get('revision', 0):02x}\n",
        "numa_node": "-1\n",
        "driver_override": "(null)\n",
        "irq": "0\n",
        f"vfio-dev/{vfio}/dev": f"{VFIO_DEV_MAJOR}:{minor}\n",
        "modalias": (f"pci:v{vendor:08X}d{device:08X}sv{sub_vendor:08X}sd{sub_device:08X}"
                     f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}\n"),
    }
    out = {k: v.encode() for k, v in files.items()}
    out["driver"] = ("link", "../../../bus/pci/drivers/vfio-pci")
    out["iommu_group"] = ("link", f"../{GROUPS_DIR}/{info['group']}")
    return out


def read_infos(mnt):
    """The ``info`` documents of a mount's PCI functions (mdevs have no
    sysfs PCI directory of their own), in name order."""
    out = []
    base = os.path.join(mnt, "devices")
    for name in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, name, "info"), "rb") as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if info.get("sysfs") is None:       # an mdev: no PCI function of its own
            continue
        out.append(info)
    return out


def build_sysfs(infos, mount, pci_dir=PCI_DEVICES):
    """Cover ``pci_dir`` with a tmpfs holding the host's entries and one
    directory per emulated function in ``infos`` (info documents, see
    :func:`device_files`). ``mount(source, target, fstype, flags, data)``
    is the mount(2) wrapper of devfs.run (this runs in the child of ``iommufs
    run``, in its private mount namespace). Returns the sysfs names made.

    Raises OSError: EEXIST when the host has a function of an emulated
    device's sysfs name; what mount(2) or the file calls raise.
    """
    host = {}
    for name in os.listdir(pci_dir):
        path = os.path.join(pci_dir, name)
        host[name] = os.readlink(path) if os.path.islink(path) else None
    wanted = [(i["sysfs"], i) for i in infos]
    for name, _info in wanted:
        if name in host:
            raise OSError(errno.EEXIST, f"the host has a PCI function {name}")
    mount("iommufs-sysfs", pci_dir, "tmpfs", 0x2, "mode=0755")   # MS_NOSUID
    for name, target in sorted(host.items()):
        if target is not None:
            os.symlink(target, os.path.join(pci_dir, name))
    made = []
    for name, info in wanted:
        root = os.path.join(pci_dir, name)
        os.mkdir(root, 0o755)
        os.makedirs(os.path.join(pci_dir, GROUPS_DIR, str(info["group"]), "devices"), 0o755,
                    exist_ok=True)
        os.symlink(f"../../../{name}",
                   os.path.join(pci_dir, GROUPS_DIR, str(info["group"]), "devices", name))
        for rel, content in device_files(info).items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if isinstance(content, tuple):
                os.symlink(content[1], path)
            else:
                with open(path, "wb") as f:
                    f.write(content)
                os.chmod(path, 0o444)
        made.append(name)
    return made
