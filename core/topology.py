"""The emulated PCI topology (DESIGN.md, "The emulated device").

A topology is TOML (docs/topology.md): one ``[iommu]`` table with the
IOMMU model, then ``[[device]]`` entries (PCI functions) and ``[[mdev]]``
entries (mediated devices: a parent's RID plus a default PASID, seed 004).
Devices behind a PCIe-to-PCI bridge name the bridge in ``alias``: they issue
DMA with the bridge's RID and so form one group (seed 001).
"""
import tomllib
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .pci.models import identity_of

BUILTIN = """
# The built-in topology: one device of each model, and the shapes the seeds
# talk about (PASID, PRI, ENQCMD, a bridge, an mdev). A device's vendor and
# device IDs are its model's unless the entry gives others.
[iommu]
address_width = 48            # IOVA bits: 48 (4-level) or 57 (5-level)
page_sizes = [4096, 2097152, 1073741824]
reserved = [[0xfee00000, 0xfeefffff]]   # the x86 MSI window, reserved in every IOAS a device attaches to
pasid_bits = 20               # PASID width of the IOMMU: the system-wide (ENQCMD) PASID space

[[device]]                    # a plain device: no PASID, no PRI
name = "0000:00:03.0"
model = "virtio-blk"          # disk: a 64 MiB scratch image unless `disk = "PATH"`
dirty_tracking = true

[[device]]                    # an accelerator: PASID, PRI, ATS, ENQCMD (global PASIDs)
name = "0000:00:04.0"
model = "dma-engine"
pasid_bits = 20
pasid_exec = true             # PCI PASID capability: Execute and Privileged Mode permitted
pasid_priv = true
pri = true
ats = true
enqcmd = true
dirty_tracking = true

[[device]]                    # a PASID device whose driver allocates PASIDs from its own space
name = "0000:00:05.0"
model = "virtio-rng"
pasid_bits = 8
pri = true
ats = true

[[device]]                    # two conventional PCI devices behind a PCIe-to-PCI bridge
name = "0000:01:00.0"
model = "dma-engine"
alias = "0000:00:1e.0"

[[device]]
name = "0000:01:01.0"
model = "dma-engine"
alias = "0000:00:1e.0"

[[device]]                    # Intel CBDMA: the kernel's VFIO selftests' ioat driver binds to it
name = "0000:00:06.0"
model = "ioat"

[[mdev]]                      # a mediated device carved out of the accelerator
name = "mdev0"
parent = "0000:00:04.0"
default_pasid = 1
"""

#: The PCI domain (segment) emulated functions take in the sysfs view of
#: ``iommufs run`` (docs/shim.md): a topology's ``0000:00:03.0`` shows as
#: ``01f5:00:03.0``, so it never shadows a host function, and that is the
#: device name programs give (QEMU's host=, the VFIO selftests' BDF,
#: VFIO_GROUP_GET_DEVICE_FD).
SYSFS_DOMAIN = 0x01F5

#: Device models (core/pci/models), by the topology's ``model`` name.
MODELS = ("virtio-blk", "virtio-rng", "dma-engine", "ioat")


def parse_bdf(bdf):
    """``"DDDD:BB:DD.F"`` -> RID (u16: bus << 8 | device << 3 | function).

    Raises ValueError on a malformed BDF.
    """
    try:
        _dom, bus, devfn = bdf.split(":")
        dev, fn = devfn.split(".")
        b, d, f = int(bus, 16), int(dev, 16), int(fn, 16)
    except ValueError:
        raise ValueError(f"bad BDF {bdf!r}") from None
    if b > 0xFF or d > 0x1F or f > 7:
        raise ValueError(f"bad BDF {bdf!r}")
    return (b << 8) | (d << 3) | f


@dataclass(frozen=True)
class IommuModel:
    """The IOMMU in front of the devices: IOVA width (bits), page sizes (bytes),
    and device-imposed reserved IOVA ranges (inclusive pairs)."""

    address_width: int = 48
    page_sizes: tuple = (4096, 2 << 20, 1 << 30)
    reserved: tuple = ((0xFEE00000, 0xFEEFFFFF),)
    pasid_bits: int = 20

    @property
    def granule(self):
        """The smallest page size in bytes: the page table's granule."""
        return min(self.page_sizes)

    @property
    def max_leaf_level(self):
        """The highest page-table level that may hold a leaf (1 = 2 MiB, 2 = 1 GiB)."""
        level, size = 0, self.granule
        while size * 512 in self.page_sizes:
            size *= 512
            level += 1
        return level

    def reserved_ranges(self):
        """Inclusive IOVA ranges a device behind this IOMMU cannot use (its
        reserved regions: the topology's windows, e.g. the MSI range),
        reserved in an IOAS while the device is attached at its RID (§8)."""
        return list(self.reserved)

    @property
    def aperture(self):
        """The IOVA a domain of this IOMMU translates: ``(0, 2**width - 1)``,
        inclusive. Everything outside is reserved while the domain is in an
        IOAS (§7, IOAS_IOVA_RANGES)."""
        return (0, (1 << self.address_width) - 1)

    def key(self):
        """Domains are interchangeable between devices with equal keys (auto-domain reuse)."""
        return (self.address_width, tuple(self.page_sizes))


@dataclass(frozen=True)
class Device:
    """One emulated PCI function or mdev.

    ``rid``: the requester ID its DMA carries (the bridge's for aliased
    devices, the parent's for an mdev); ``pasid_bits``: PASID width (0 = no
    PASID); ``default_pasid``: the PASID of an mdev's DMA, else None.
    """

    name: str
    vfio: str
    rid: int
    vendor: int = 0
    device_id: int = 0
    pasid_bits: int = 0
    pasid_exec: bool = False
    pasid_priv: bool = False
    pri: bool = False
    ats: bool = False
    enqcmd: bool = False
    dirty_tracking: bool = False
    alias: str = None
    parent: str = None
    default_pasid: int = None
    iommu: IommuModel = field(default_factory=IommuModel)
    model: str = "dma-engine"         # the PCI device behind the VFIO node (core/pci/models)
    disk: str = None                  # virtio-blk: the image file (None: a scratch image)
    readonly: bool = False            # virtio-blk: VIRTIO_BLK_F_RO
    pcie: bool = True                 # a PCI Express function (conventional behind a bridge)
    class_code: int = 0xFF0000
    group: int = 0
    group_members: tuple = ()         # names of every device of the group, this one included

    @property
    def is_mdev(self):
        return self.parent is not None

    @property
    def sysfs_name(self):
        """The function's name in the run's sysfs view (``SYSFS_DOMAIN``
        with this BDF's bus, device and function); None for an mdev."""
        if self.is_mdev:
            return None
        return f"{SYSFS_DOMAIN:04x}:{self.name.split(':', 1)[1]}"

    def hw_info(self):
        """The IOMMU driver's GET_HW_INFO answer for the device: ``(type,
        data bytes, PCI)``; the emulated PCI IOMMU has no driver data (type
        NONE) and its devices are PCI functions (§9.2)."""
        return 0, b"", True


class Topology:
    """A parsed topology, frozen: ``devices`` in declaration order (vfio0,
    vfio1, ...), ``groups``: group number -> (Device, ...) (devices sharing
    a RID); ``by_rid``: RID -> (Device, ...) (every device whose DMA
    carries that RID: a group's members, a parent and its mdevs)."""

    def __init__(self, doc):
        iommu_doc = doc.get("iommu", {})
        iommu = IommuModel(
            address_width=int(iommu_doc.get("address_width", 48)),
            page_sizes=tuple(sorted(int(x) for x in iommu_doc.get("page_sizes", (4096, 2 << 20, 1 << 30)))),
            reserved=tuple(tuple(int(v) for v in r) for r in iommu_doc.get("reserved", ((0xFEE00000, 0xFEEFFFFF),))),
            pasid_bits=int(iommu_doc.get("pasid_bits", 20)),
        )
        if iommu.address_width not in (39, 48, 57):
            raise ValueError("iommu.address_width must be 39, 48 or 57")
        if not 0 <= iommu.pasid_bits <= 20:
            raise ValueError("iommu.pasid_bits must be 0..20")
        self.iommu = iommu
        devices = []
        names = set()
        for i, d in enumerate(doc.get("device", [])):
            name = d["name"]
            rid = parse_bdf(d["alias"]) if d.get("alias") else parse_bdf(name)
            pasid_bits = int(d.get("pasid_bits", 0))
            if not 0 <= pasid_bits <= iommu.pasid_bits:
                raise ValueError(f"{name}: pasid_bits must be 0..{iommu.pasid_bits} (the IOMMU's)")
            if d.get("enqcmd") and not pasid_bits:
                raise ValueError(f"{name}: enqcmd needs pasid_bits")
            model = d.get("model", "dma-engine")
            if model not in MODELS:
                raise ValueError(f"{name}: model must be one of {', '.join(MODELS)}")
            if model != "virtio-blk" and ("disk" in d or "readonly" in d):
                raise ValueError(f"{name}: disk and readonly are virtio-blk's")
            vendor, device_id, class_code = identity_of(model)
            # Behind a PCIe-to-PCI bridge a function is conventional PCI.
            pcie = bool(d.get("pcie", not d.get("alias")))
            if not pcie and (pasid_bits or d.get("pri") or d.get("ats")):
                raise ValueError(f"{name}: PASID, PRI and ATS need a PCI Express function")
            devices.append(Device(
                name=name, vfio=f"vfio{len(devices)}", rid=rid,
                vendor=int(d.get("vendor", vendor)), device_id=int(d.get("device", device_id)),
                model=model, disk=d.get("disk"), readonly=bool(d.get("readonly", False)),
                pcie=pcie, class_code=class_code,
                pasid_bits=pasid_bits, pri=bool(d.get("pri", False)),
                pasid_exec=bool(d.get("pasid_exec", False)) and pasid_bits > 0,
                pasid_priv=bool(d.get("pasid_priv", False)) and pasid_bits > 0,
                ats=bool(d.get("ats", False)), enqcmd=bool(d.get("enqcmd", False)),
                dirty_tracking=bool(d.get("dirty_tracking", False)),
                alias=d.get("alias"), iommu=iommu))
            if name in names:
                raise ValueError(f"duplicate device {name}")
            names.add(name)
        by_name = {d.name: d for d in devices}
        for m in doc.get("mdev", []):
            parent = by_name.get(m["parent"])
            if parent is None:
                raise ValueError(f"mdev {m['name']}: unknown parent {m['parent']}")
            if parent.pasid_bits == 0:
                raise ValueError(f"mdev {m['name']}: parent has no PASID")
            pasid = int(m["default_pasid"])
            if not 0 < pasid < (1 << parent.pasid_bits):
                raise ValueError(f"mdev {m['name']}: default_pasid out of range")
            devices.append(Device(
                name=m["name"], vfio=f"vfio{len(devices)}", rid=parent.rid,
                vendor=parent.vendor, device_id=parent.device_id, model=parent.model,
                disk=parent.disk, readonly=parent.readonly, class_code=parent.class_code,
                pasid_bits=0, pri=parent.pri, ats=parent.ats,
                dirty_tracking=parent.dirty_tracking, parent=parent.name,
                default_pasid=pasid, iommu=iommu))
        # Devices that DMA with one RID cannot be told apart: one group per RID
        # (an mdev is isolated by its PASID, so it gets a group of its own).
        group_of, members, rid_group = {}, {}, {}
        for d in devices:
            g = len(members) if d.is_mdev else rid_group.setdefault(d.rid, len(members))
            group_of[d.name] = g
            members.setdefault(g, []).append(d.name)
        # Frozen from here on: runtime state lives in core.devices.LiveDevice.
        self.devices = tuple(replace(d, group=group_of[d.name],
                                     group_members=tuple(members[group_of[d.name]]))
                             for d in devices)
        by_name = {d.name: d for d in self.devices}
        self.groups = MappingProxyType({g: tuple(by_name[n] for n in names)
                                        for g, names in members.items()})
        by_rid = {}
        for d in self.devices:
            by_rid.setdefault(d.rid, []).append(d)
        self.by_rid = MappingProxyType({rid: tuple(ds) for rid, ds in by_rid.items()})

    @classmethod
    def builtin(cls):
        """The built-in topology (see BUILTIN)."""
        return cls(tomllib.loads(BUILTIN))

    @classmethod
    def load(cls, path):
        """Parse a TOML topology file. Raises ValueError/KeyError/TOMLDecodeError."""
        with open(path, "rb") as f:
            return cls(tomllib.load(f))

    @classmethod
    def from_string(cls, text):
        return cls(tomllib.loads(text))
