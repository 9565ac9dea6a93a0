"""Config-space blocks and their permission tables.

As vfio-pci's vfio_pci_config.c (vfio-device.md §5): each block (the type-0
header, each capability) carries its power-on bytes and two per-byte masks:

- ``virt``: bits read from and written to vfio's virtual copy (vconfig),
  which survives a function reset (§3.5, §7);
- ``write``: bits the user may change. Writable virtual bits go to vconfig,
  writable non-virtual bits to the function's own registers ("hardware"),
  which a reset returns to power-on values.

Bits neither writable nor virtual read the hardware value and ignore writes
(§4.1: "writes to read-only bits are silently dropped"). A block may trap
accesses with ``on_read``/``on_write`` for registers whose meaning is more
than storage (BARs, Command, MSI control, PMCSR, Initiate FLR, virtio's
PCI_CFG window). ConfigSpace (config.py) owns the one generic path.
"""
from . import consts as C


class Block:
    """A range of config space owned by one capability (or the header).

    ``cap_id``: the standard or extended capability ID (None for the header);
    ``length``: bytes; ``extended``: lives at >= 0x100 with a 32-bit header.
    ``hidden``: unlinked from the chain and read as zeroes (§5.2, §5.3).
    """

    cap_id = None
    extended = False
    version = 1
    hidden = False

    def __init__(self, length):
        self.length = length
        self.offset = None
        self.image = bytearray(length)
        self.virt = bytearray(length)
        self.write = bytearray(length)

    def field(self, off, size, value=0, virt=0, write=0):
        """Declare ``size`` bytes at ``off``: power-on ``value`` and masks."""
        self.image[off:off + size] = value.to_bytes(size, "little")
        self.virt[off:off + size] = virt.to_bytes(size, "little")
        self.write[off:off + size] = write.to_bytes(size, "little")

    def on_read(self, cs, rel, size, value):
        """Adjust a read of ``size`` bytes at block offset ``rel``; returns the value."""
        return value

    def on_write(self, cs, rel, size, value):
        """React to a write (after the masks were applied); ``value`` is what the user wrote."""

    def header_fields(self):
        """Standard caps: ID byte, then a virtual read-only Next (§5.2).
        Extended caps: the whole header dword virtual read-only (§5.3)."""
        if self.extended:
            self.field(0, 4, self.cap_id | (self.version << 16), virt=0xFFFFFFFF)
        else:
            self.field(0, 1, self.cap_id)
            self.field(1, 1, 0, virt=0xFF)


class PowerManagement(Block):
    """PM capability, 8 bytes (§13.2, §5.2).

    PME_Support reads 0 (virtual); PME_En/PME_Status are virtual and read 0;
    PowerState is trapped: D0 and D3hot are accepted, D1/D2 (unsupported)
    ignored, as the PM spec says for unsupported states.
    """

    cap_id = C.CAP_ID_PM
    PMC, PMCSR = 2, 4

    def __init__(self, no_soft_reset=True):
        super().__init__(8)
        self.header_fields()
        self.field(self.PMC, 2, 0x0003, virt=0xF800)
        # Data_Select (12:9) is writable in hardware; no Data register behind it.
        self.field(self.PMCSR, 2, 0x0008 if no_soft_reset else 0, virt=0x8100, write=0x1E00)

    def on_write(self, cs, rel, size, value):
        if rel <= self.PMCSR < rel + size:
            state = (value >> ((self.PMCSR - rel) * 8)) & 0x3
            if state in (0, 3):
                cs.events.power_state_written(state)


class Msi(Block):
    """MSI capability, 10/14/20/24 bytes (§13.3), emulated by vfio (§5.2).

    Control low byte, Address and Data are virtual; Enable and Multiple
    Message Capable/Enable read as the SET_IRQS state (``events.msi_state()``
    gives ``(enabled, qmax)``); Mask bits are writable in hardware and
    Pending bits set by the function. ``vectors`` is 1, 2, 4, ..., 32.
    """

    cap_id = C.CAP_ID_MSI

    def __init__(self, vectors=1, addr64=True, per_vector_mask=True):
        mmc = vectors.bit_length() - 1
        if vectors != 1 << mmc or mmc > 5:
            raise ValueError("MSI vectors must be a power of two <= 32")
        length = {(False, False): 10, (True, False): 14, (False, True): 20, (True, True): 24}[
            (addr64, per_vector_mask)]
        super().__init__(length)
        self.vectors = vectors
        self.header_fields()
        control = (mmc << 1) | (0x80 if addr64 else 0) | (0x100 if per_vector_mask else 0)
        self.field(2, 2, control, virt=0x00FF, write=0x0071)
        self.field(4, 4, 0, virt=0xFFFFFFFF, write=0xFFFFFFFC)
        data_off = 8
        if addr64:
            self.field(8, 4, 0, virt=0xFFFFFFFF, write=0xFFFFFFFF)
            data_off = 0x0C
        self.field(data_off, 2, 0, virt=0xFFFF, write=0xFFFF)
        self.mask_off = self.pending_off = None
        if per_vector_mask:
            self.mask_off = data_off + 4
            self.pending_off = data_off + 8
            self.field(self.mask_off, 4, 0, write=(1 << vectors) - 1)
            self.field(self.pending_off, 4, 0)

    def control_view(self, written, enabled, qmax):
        """Message Control as vfio shows it (§5.2): MME clamped to ``qmax``,
        MMC reads ``qmax`` once enabled."""
        capable = self.vectors.bit_length() - 1
        limit = qmax if enabled else capable
        mme = min((written >> 4) & 0x7, limit)
        mmc = qmax if enabled else capable
        return (written & ~0x7F) | (mmc << 1) | (mme << 4) | (1 if enabled else 0)

    def on_read(self, cs, rel, size, value):
        if rel <= 2 < rel + size:
            enabled, qmax = cs.events.msi_state()
            shift = (2 - rel) * 8
            written = cs.merged(self.offset + 2, 2)
            view = self.control_view(written, enabled, qmax)
            width = min(2, rel + size - 2)
            mask = (1 << (width * 8)) - 1
            value = (value & ~(mask << shift)) | ((view & mask) << shift)
        return value

    def on_write(self, cs, rel, size, value):
        if self.mask_off is not None and rel < self.mask_off + 4 and self.mask_off < rel + size:
            cs.events.msi_mask_written()


class Msix(Block):
    """MSI-X capability, 12 bytes (§13.4). Read-only to the user, writes
    dropped (§5.2): Enable and Function Mask follow SET_IRQS, set by the
    device in the hardware bytes."""

    cap_id = C.CAP_ID_MSIX
    ENABLE, FUNCTION_MASK = 0x8000, 0x4000

    def __init__(self, vectors, table_bar, table_offset, pba_bar, pba_offset):
        super().__init__(12)
        if not 1 <= vectors <= 2048 or table_offset & 7 or pba_offset & 7:
            raise ValueError("MSI-X: 1..2048 vectors, 8-byte aligned table and PBA")
        self.vectors = vectors
        self.table_bar, self.table_offset = table_bar, table_offset
        self.pba_bar, self.pba_offset = pba_bar, pba_offset
        self.header_fields()
        self.field(2, 2, vectors - 1)
        self.field(4, 4, table_offset | table_bar)
        self.field(8, 4, pba_offset | pba_bar)


class PciExpress(Block):
    """PCI Express capability v2, endpoint, 60 bytes (§13.5, §5.2).

    DevCtl is writable except Phantom Functions; MPS, MRRS and Initiate FLR
    are virtual, FLR reads 0 and resets the function when DEVCAP.FLR is set.
    DevCtl2 is writable except ARI Forwarding; the rest is read-only.
    """

    cap_id = C.CAP_ID_EXP
    DEVCAP, DEVCTL, DEVCTL2 = 0x04, 0x08, 0x28
    DEVCTL_FLR = 0x8000

    def __init__(self, flr=True):
        super().__init__(60)
        self.flr = flr
        self.header_fields()
        self.field(2, 2, 0x0002)                       # version 2, endpoint
        self.field(self.DEVCAP, 4, (1 << 28) if flr else 0)
        # Power-on DevCtl: relaxed ordering, no-snoop, MRRS 512 bytes.
        self.field(self.DEVCTL, 2, 0x2810, virt=0xF0E0, write=0xFDFF)
        self.field(0x0C, 4, 0x00000011)                # link: 2.5 GT/s, x1
        self.field(0x12, 2, 0x0011)
        self.field(self.DEVCTL2, 2, 0, write=0xFFDF)
        self.field(0x2C, 4, 0x2)                       # supported speeds: 2.5 GT/s

    def on_read(self, cs, rel, size, value):
        # Initiate FLR always reads 0 (§13.5, §5.2).
        bit = self.DEVCTL + 1 - rel
        if 0 <= bit < size:
            value &= ~(0x80 << (bit * 8))
        return value

    def on_write(self, cs, rel, size, value):
        bit = self.DEVCTL + 1 - rel
        if 0 <= bit < size and (value >> (bit * 8)) & 0x80 and self.flr:
            cs.events.flr()


class Vendor(Block):
    """Vendor-specific capability (ID 0x09); ``body`` is the bytes after the
    two-byte header, cap_len included (virtio-pci.md §2.1). Raw writes reach
    the function (§5.2), which decides what is writable: ``write`` masks."""

    cap_id = C.CAP_ID_VNDR

    def __init__(self, body, write=None):
        super().__init__(2 + len(body))
        self.header_fields()
        self.image[2:] = body
        if write is not None:
            self.write[2:] = write


class Ats(Block):
    """ATS extended capability, 8 bytes, read-only under vfio (§13.6, §5.3)."""

    cap_id = C.EXT_CAP_ID_ATS
    extended = True

    def __init__(self):
        super().__init__(8)
        self.header_fields()
        self.field(4, 2, 0x0020)          # page aligned requests, queue depth 32


class Pri(Block):
    """PRI extended capability, 16 bytes, read-only under vfio (§13.7, §5.3);
    ``capacity`` = Outstanding Page Request Capacity."""

    cap_id = C.EXT_CAP_ID_PRI
    extended = True

    def __init__(self, capacity=32, pasid_required=False):
        super().__init__(16)
        self.header_fields()
        self.field(6, 2, 0x8100 if pasid_required else 0x0100)   # stopped (+ PASID required)
        self.field(8, 4, capacity)


class Pasid(Block):
    """PASID extended capability, 8 bytes (§13.8): present in the function,
    hidden by vfio ("not yet", §5.3)."""

    cap_id = C.EXT_CAP_ID_PASID
    extended = True
    hidden = True

    def __init__(self, bits):
        super().__init__(8)
        self.header_fields()
        self.field(4, 2, (bits & 0x1F) << 8)
