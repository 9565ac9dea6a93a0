"""Fakes for the core/pci tests: guest RAM behind a DMA port, signal sinks,
and a small model with every kind of BAR. No tests here."""
import errno
import struct

from core.pci import BarSpec, DmaError, Identity, Model, MsixLayout, PciDevice
from core.pci import consts as C


class RamPort:
    """A DMA port over a bytearray "guest RAM" at IOVA ``base``; accesses
    outside it (or inside ``holes``, a list of (start, end)) raise
    DmaError(EFAULT) at the first unmapped IOVA."""

    def __init__(self, size=1 << 20, base=0, holes=()):
        self.ram = bytearray(size)
        self.base = base
        self.holes = list(holes)
        self.log = []

    def _check(self, iova, length):
        for a in range(iova, iova + max(length, 1)):
            if not self.base <= a < self.base + len(self.ram) or any(s <= a < e for s, e in self.holes):
                raise DmaError(errno.EFAULT, a)

    def read(self, iova, length, pasid=None):
        self._check(iova, length)
        self.log.append(("r", iova, length, pasid))
        off = iova - self.base
        return bytes(self.ram[off:off + length])

    def write(self, iova, data, pasid=None):
        self._check(iova, len(data))
        self.log.append(("w", iova, len(data), pasid))
        off = iova - self.base
        self.ram[off:off + len(data)] = data

    def put(self, iova, data):
        self.ram[iova - self.base:iova - self.base + len(data)] = data

    def get(self, iova, length):
        return bytes(self.ram[iova - self.base:iova - self.base + length])


class Sink:
    """A signal sink counting signals, as an eventfd counter would."""

    def __init__(self, name=""):
        self.name = name
        self.count = 0
        self.closed = 0

    def signal(self):
        assert not self.closed, "signal after close"
        self.count += 1

    def close(self):
        self.closed += 1

    def take(self):
        """Read the eventfd: the count since the last read."""
        n, self.count = self.count, 0
        return n


class ProbeModel(Model):
    """Every kind of BAR, a ROM, MSI with 4 vectors, MSI-X with 8 vectors in
    BAR5; records BAR accesses."""

    kind = "probe"
    identity = Identity(vendor=0x1234, device=0xABCD, class_code=0x058000, revision=7,
                        subsystem_vendor=0x1234, subsystem_id=0x0042, interrupt_pin=1)
    bars = (BarSpec(0x4000), BarSpec(0x100, io=True), BarSpec(0x100000, is64=True, prefetch=True),
            None, BarSpec(0x200000000, is64=True, prefetch=True), None)
    rom = b"\x55\xaa" + bytes(range(2, 100))
    rom_size = 0x1000
    msi_vectors = 4

    def __init__(self, msix_bar=0):
        super().__init__()
        self.msix = MsixLayout(8, table_bar=msix_bar, table_offset=0x2000, pba_bar=msix_bar,
                               pba_offset=0x3000)
        self.accesses = []
        self.mem = {}
        self.resets = 0

    def bar_read(self, bar, offset, size):
        self.accesses.append(("r", bar, offset, size))
        return int.from_bytes(bytes(self.mem.get((bar, offset + i), 0) for i in range(size)), "little")

    def bar_write(self, bar, offset, size, value):
        self.accesses.append(("w", bar, offset, size))
        for i, b in enumerate(value.to_bytes(size, "little")):
            self.mem[(bar, offset + i)] = b

    def reset(self):
        self.resets += 1
        self.mem.clear()


def cfg_read(dev, off, size):
    return int.from_bytes(dev.region_read(C.CONFIG_REGION, off, size), "little")


def cfg_write(dev, off, size, value):
    return dev.region_write(C.CONFIG_REGION, off, value.to_bytes(size, "little"))


def enable(dev, bits):
    cfg_write(dev, C.COMMAND, 2, cfg_read(dev, C.COMMAND, 2) | bits)


def caps_walk(dev):
    """[(offset, id)] of the standard chain from 0x34."""
    out, pos = [], cfg_read(dev, C.CAPABILITY_LIST, 1)
    while pos:
        out.append((pos, cfg_read(dev, pos, 1)))
        pos = cfg_read(dev, pos + 1, 1) & ~3
    return out


def ext_walk(dev):
    """[(offset, id, version)] of the extended chain from 0x100."""
    out, pos = [], 0x100
    while pos:
        hdr = cfg_read(dev, pos, 4)
        if hdr == 0:
            break
        out.append((pos, hdr & 0xFFFF, (hdr >> 16) & 0xF))
        pos = hdr >> 20
    return out


def irq_set(dev, flags, index, start, count, data=b"", sinks=None, argsz=None):
    if argsz is None:
        argsz = C.IRQ_SET_HEADER + len(data)
    return dev.set_irqs(argsz, flags, index, start, count, data, sinks)


def fds(*values):
    return struct.pack(f"<{len(values)}i", *values)
