"""The emulated PCI topology (DESIGN.md, "The emulated device").

A topology is TOML (README, "Topology format"): one ``[iommu]`` table with the
IOMMU model, then ``[[device]]`` entries (PCI functions) and ``[[mdev]]``
entries (mediated devices: a parent's RID plus a default PASID, seed 004).
Devices behind a PCIe-to-PCI bridge name the bridge in ``alias``: they issue
DMA with the bridge's RID and so form one group (seed 001).
"""
import json
import tomllib
from dataclasses import dataclass, field

BUILTIN = """
# The built-in topology: one device of each kind the seeds talk about.
[iommu]
address_width = 48            # IOVA bits: 48 (4-level) or 57 (5-level)
page_sizes = [4096, 2097152, 1073741824]
reserved = [[0xfee00000, 0xfeefffff]]   # the x86 MSI window, reserved in every IOAS a device attaches to

[[device]]                    # a plain device: no PASID, no PRI
name = "0000:00:03.0"
vendor = 0x1af4
device = 0x1041
dirty_tracking = true

[[device]]                    # an accelerator: PASID, PRI, ATS, ENQCMD (global PASIDs)
name = "0000:00:04.0"
vendor = 0x8086
device = 0x0b25
pasid_bits = 20
pri = true
ats = true
enqcmd = true
dirty_tracking = true

[[device]]                    # two conventional PCI devices behind a PCIe-to-PCI bridge
name = "0000:01:00.0"
vendor = 0x8086
device = 0x100e
alias = "0000:00:1e.0"

[[device]]
name = "0000:01:01.0"
vendor = 0x8086
device = 0x100e
alias = "0000:00:1e.0"

[[mdev]]                      # a mediated device carved out of the accelerator
name = "mdev0"
parent = "0000:00:04.0"
default_pasid = 1
"""


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


@dataclass
class IommuModel:
    """The IOMMU in front of the devices: IOVA width (bits), page sizes (bytes),
    and device-imposed reserved IOVA ranges (inclusive pairs)."""

    address_width: int = 48
    page_sizes: tuple = (4096, 2 << 20, 1 << 30)
    reserved: tuple = ((0xFEE00000, 0xFEEFFFFF),)

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
        """Inclusive IOVA ranges a device behind this IOMMU cannot use: the
        topology's reserved windows plus everything past the aperture."""
        out = list(self.reserved)
        if self.address_width < 64:
            out.append((1 << self.address_width, (1 << 64) - 1))
        return out

    def key(self):
        """Domains are interchangeable between devices with equal keys (auto-domain reuse)."""
        return (self.address_width, tuple(self.page_sizes))


@dataclass
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
    pri: bool = False
    ats: bool = False
    enqcmd: bool = False
    dirty_tracking: bool = False
    alias: str = None
    parent: str = None
    default_pasid: int = None
    iommu: IommuModel = field(default_factory=IommuModel)
    group: int = 0
    # Runtime state, owned by core.vfio / core.device:
    bound: object = None              # the BoundDevice while bound to a context
    fault_log: list = field(default_factory=list)

    @property
    def is_mdev(self):
        return self.parent is not None

    def info(self):
        """The ``info`` document (DESIGN.md): a dict ready for JSON."""
        d = {
            "name": self.name,
            "vfio": self.vfio,
            "rid": self.rid,
            "bdf": self.alias or (self.parent if self.is_mdev else self.name),
            "group": self.group,
            "vendor": self.vendor,
            "device": self.device_id,
            "pasid_bits": self.pasid_bits,
            "pri": self.pri,
            "ats": self.ats,
            "enqcmd": self.enqcmd,
            "dirty_tracking": self.dirty_tracking,
            "address_width": self.iommu.address_width,
            "page_sizes": list(self.iommu.page_sizes),
            "faults": len(self.fault_log),
            "last_fault": self.fault_log[-1] if self.fault_log else None,
        }
        if self.is_mdev:
            d["parent"] = self.parent
            d["default_pasid"] = self.default_pasid
        return d

    def info_json(self):
        return (json.dumps(self.info(), indent=1) + "\n").encode()


class Topology:
    """A parsed topology: ``devices`` in declaration order (vfio0, vfio1, ...),
    ``groups``: group number -> [Device] (devices sharing a RID)."""

    def __init__(self, doc):
        iommu_doc = doc.get("iommu", {})
        iommu = IommuModel(
            address_width=int(iommu_doc.get("address_width", 48)),
            page_sizes=tuple(sorted(int(x) for x in iommu_doc.get("page_sizes", (4096, 2 << 20, 1 << 30)))),
            reserved=tuple(tuple(int(v) for v in r) for r in iommu_doc.get("reserved", ((0xFEE00000, 0xFEEFFFFF),))),
        )
        if iommu.address_width not in (39, 48, 57):
            raise ValueError("iommu.address_width must be 39, 48 or 57")
        self.iommu = iommu
        self.devices = []
        names = set()
        for i, d in enumerate(doc.get("device", [])):
            name = d["name"]
            rid = parse_bdf(d["alias"]) if d.get("alias") else parse_bdf(name)
            pasid_bits = int(d.get("pasid_bits", 0))
            if not 0 <= pasid_bits <= 20:
                raise ValueError(f"{name}: pasid_bits must be 0..20")
            self.devices.append(Device(
                name=name, vfio=f"vfio{len(self.devices)}", rid=rid,
                vendor=int(d.get("vendor", 0)), device_id=int(d.get("device", 0)),
                pasid_bits=pasid_bits, pri=bool(d.get("pri", False)),
                ats=bool(d.get("ats", False)), enqcmd=bool(d.get("enqcmd", False)),
                dirty_tracking=bool(d.get("dirty_tracking", False)),
                alias=d.get("alias"), iommu=iommu))
            if name in names:
                raise ValueError(f"duplicate device {name}")
            names.add(name)
        by_name = {d.name: d for d in self.devices}
        for m in doc.get("mdev", []):
            parent = by_name.get(m["parent"])
            if parent is None:
                raise ValueError(f"mdev {m['name']}: unknown parent {m['parent']}")
            if parent.pasid_bits == 0:
                raise ValueError(f"mdev {m['name']}: parent has no PASID")
            pasid = int(m["default_pasid"])
            if not 0 < pasid < (1 << parent.pasid_bits):
                raise ValueError(f"mdev {m['name']}: default_pasid out of range")
            self.devices.append(Device(
                name=m["name"], vfio=f"vfio{len(self.devices)}", rid=parent.rid,
                vendor=parent.vendor, device_id=parent.device_id,
                pasid_bits=0, pri=parent.pri, ats=parent.ats,
                dirty_tracking=parent.dirty_tracking, parent=parent.name,
                default_pasid=pasid, iommu=iommu))
        # Devices that DMA with one RID cannot be told apart: one group per RID
        # (an mdev is isolated by its PASID, so it gets a group of its own).
        self.groups = {}
        rid_group = {}
        for d in self.devices:
            if d.is_mdev:
                d.group = len(self.groups)
            else:
                d.group = rid_group.setdefault(d.rid, len(self.groups))
            self.groups.setdefault(d.group, []).append(d)

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
