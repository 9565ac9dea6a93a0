"""Fakes for the core/pci tests: guest RAM behind a DMA port, signal sinks,
and a small model with every kind of BAR. No tests here."""
import errno
import struct

from core.pci import BarSpec, DmaError, Identity, Model, MsixLayout
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
        end = iova + max(length, 1)
        bad = [max(iova, s) for s, e in self.holes if s < end and iova < e]
        if iova < self.base:
            bad.append(iova)
        if end > self.base + len(self.ram):
            bad.append(max(iova, self.base + len(self.ram)))
        if bad:
            raise DmaError(errno.EFAULT, min(bad))

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
    return dev.set_irqs(flags, index, start, count, data, sinks, argsz=argsz)


def fds(*values):
    return struct.pack(f"<{len(values)}i", *values)


# -- a virtio-pci driver doing what Linux does (virtio-pci.md §4.2) -----------

DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4


class VirtioDriver:
    """Drives a virtio-pci PciDevice through its regions, as Linux's
    virtio_pci does; rings live in the RamPort's RAM."""

    RING = 0x10000           # desc table; avail at +0x1000, used at +0x2000
    BUF = 0x20000            # buffers from here

    def __init__(self, dev, port):
        self.dev, self.port = dev, port
        self.caps = {}
        self.next_buf = self.BUF
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.qsize = None

    # register access through the BAR a capability names
    def find_caps(self):
        for off, cid in caps_walk(self.dev):
            if cid != C.CAP_ID_VNDR:
                continue
            raw = self.dev.region_read(C.CONFIG_REGION, off, 20)
            cfg_type, bar = raw[3], raw[4]
            offset, length = struct.unpack_from("<II", raw, 8)
            extra = struct.unpack_from("<I", raw, 16)[0] if cfg_type == 2 else None
            self.caps.setdefault(cfg_type, (off, bar, offset, length, extra))
        return self.caps

    def rd(self, cfg_type, off, size):
        _, bar, base, _, _ = self.caps[cfg_type]
        return int.from_bytes(self.dev.region_read(bar, base + off, size), "little")

    def wr(self, cfg_type, off, size, value):
        _, bar, base, _, _ = self.caps[cfg_type]
        self.dev.region_write(bar, base + off, value.to_bytes(size, "little"))

    def status(self):
        return self.rd(1, 0x14, 1)

    def set_status(self, value):
        self.wr(1, 0x14, 1, value)

    def probe(self, want_features, msix_sinks=None, qsize=None):
        """§4.2 steps 1-15; returns the negotiated features (or raises on refusal)."""
        enable(self.dev, C.CMD_MEMORY)
        self.find_caps()
        enable(self.dev, C.CMD_MASTER)
        self.set_status(0)
        assert self.status() == 0
        self.set_status(self.status() | 0x01)
        self.set_status(self.status() | 0x02)
        offered = 0
        for sel in range(4):
            self.wr(1, 0x00, 4, sel)
            offered |= self.rd(1, 0x04, 4) << (32 * sel)
        features = offered & want_features
        for sel in range(4):
            self.wr(1, 0x08, 4, sel)
            self.wr(1, 0x0C, 4, (features >> (32 * sel)) & 0xFFFFFFFF)
        self.set_status(self.status() | 0x08)
        if not self.status() & 0x08:
            raise RuntimeError("device refuses features")
        if msix_sinks is not None:
            nfds = list(msix_sinks)
            self.dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.MSIX, 0, len(nfds),
                              struct.pack(f"<{len(nfds)}i", *nfds), msix_sinks)
            self.wr(1, 0x10, 2, 0)
            assert self.rd(1, 0x10, 2) == 0
        self.wr(1, 0x16, 2, 0)
        maxsize = self.rd(1, 0x18, 2)
        assert self.rd(1, 0x1C, 2) == 0
        self.qsize = qsize or maxsize
        self.wr(1, 0x18, 2, self.qsize)
        for off, addr in ((0x20, self.RING), (0x28, self.RING + 0x1000), (0x30, self.RING + 0x2000)):
            self.wr(1, off, 4, addr & 0xFFFFFFFF)
            self.wr(1, off + 4, 4, addr >> 32)
        if msix_sinks is not None:
            self.wr(1, 0x1A, 2, 1)
            assert self.rd(1, 0x1A, 2) == 1
        self.notify_off = self.rd(1, 0x1E, 2)
        self.wr(1, 0x1C, 2, 1)
        self.set_status(self.status() | 0x04)
        return features

    # rings
    def buf(self, data=b"", size=None):
        addr = self.next_buf
        size = len(data) if size is None else size
        self.port.put(addr, data)
        self.next_buf += (size + 15) & ~15
        return addr, size

    def add_chain(self, segs, indirect=False):
        """segs: [(addr, len, writable)]; returns the head index."""
        if indirect:
            table, _ = self.buf(size=16 * len(segs))
            for i, (a, n, w) in enumerate(segs):
                flags = (DESC_NEXT if i + 1 < len(segs) else 0) | (DESC_WRITE if w else 0)
                self.port.put(table + 16 * i, struct.pack("<QIHH", a, n, flags, i + 1))
            segs_in_ring = [(table, 16 * len(segs), None)]
        else:
            segs_in_ring = segs
        head = self.next_desc
        for i, (a, n, w) in enumerate(segs_in_ring):
            idx = (head + i) % self.qsize
            last = i + 1 == len(segs_in_ring)
            flags = (DESC_INDIRECT if w is None else (DESC_WRITE if w else 0)) | (0 if last else DESC_NEXT)
            self.port.put(self.RING + 16 * idx, struct.pack("<QIHH", a, n, flags, (idx + 1) % self.qsize))
        self.next_desc = (head + len(segs_in_ring)) % self.qsize
        avail = self.RING + 0x1000
        self.port.put(avail + 4 + 2 * (self.avail_idx % self.qsize), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.port.put(avail + 2, struct.pack("<H", self.avail_idx))
        return head

    def kick(self, queue=0):
        _, bar, base, _, mult = self.caps[2]
        self.dev.region_write(bar, base + self.notify_off * mult, struct.pack("<H", queue))

    def used(self):
        """New used elements [(id, len)] since the last call."""
        used = self.RING + 0x2000
        idx = struct.unpack("<H", self.port.get(used + 2, 2))[0]
        out = []
        while self.used_seen != idx:
            slot = used + 4 + 8 * (self.used_seen % self.qsize)
            out.append(struct.unpack("<II", self.port.get(slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out
