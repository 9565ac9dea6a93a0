"""dma-engine: a small DMA controller for userspace-driver authors.

IDs: vendor 0xD1F5, device 0x0001, class 0x080100 (base system peripheral,
DMA controller). 0xD1F5 is not a vendor ID this project knows to be
assigned (no PCI ID database was available to check it; no real device
with these IDs is known): it is chosen to look unassigned, so that no
real driver binds to the function. Subsystem 0xD1F5:0x0001, revision 1.

BARs: BAR0 (+BAR1) 64-bit non-prefetchable memory, 4 KiB, the registers
below; BAR2 32-bit memory, 4 KiB: MSI-X table (4 vectors) at 0x000, PBA at
0x800. A 2 KiB expansion ROM holds a tiny image (0x55 0xAA signature and a
name). Capabilities: PM, MSI (1 vector), MSI-X, PCIe (+ ATS/PRI per topology).

Registers (BAR0; 32-bit little-endian; 8-byte accesses act as two 4-byte
ones, low then high; other widths read/merge bytes of the dword):

| off  | name        | access | meaning |
|------|-------------|--------|---------|
| 0x00 | ID          | RO     | 0x414D4449 ("IDMA") |
| 0x04 | VERSION     | RO     | 0x00010000 |
| 0x08 | SRC_LO      | RW     | source IOVA bits 31:0 (copy) |
| 0x0C | SRC_HI      | RW     | source IOVA bits 63:32 |
| 0x10 | DST_LO      | RW     | destination IOVA bits 31:0 |
| 0x14 | DST_HI      | RW     | destination IOVA bits 63:32 |
| 0x18 | LENGTH      | RW     | bytes to move, <= MAX_LENGTH |
| 0x1C | OP          | RW     | 0 = copy SRC -> DST, 1 = fill DST with PATTERN |
| 0x20 | PATTERN     | RW     | fill pattern, a u32 repeated little-endian |
| 0x24 | PASID       | RW     | PASID of both addresses, bits 19:0 |
| 0x28 | CONTROL     | RW     | bit 0 PASID valid; bit 1 interrupt on completion |
| 0x2C | DOORBELL    | WO     | any write runs the descriptor synchronously; reads 0 |
| 0x30 | STATUS      | RW1C   | bit 0 DONE, bit 1 ERROR (of the last doorbell) |
| 0x34 | ERROR       | RO     | errno of the failure (EFAULT/EACCES/ENODEV from the IOMMU, EIO with Bus Master clear, EINVAL for a bad descriptor), 0 after success |
| 0x38 | FAULT_LO    | RO     | IOVA that failed, bits 31:0 (0 for EINVAL) |
| 0x3C | FAULT_HI    | RO     | bits 63:32 |
| 0x40 | COMPLETED   | RO     | descriptors completed without error |
| 0x44 | IRQ_STATUS  | RW1C   | bit 0: completion interrupt pending; INTx is asserted while set |
| 0x48 | MAX_LENGTH  | RO     | 0x00100000 (1 MiB) |

Completion interrupt (CONTROL bit 1, after DONE or ERROR is set): IRQ_STATUS
bit 0 is set, then MSI-X vector 0 if SET_IRQS enabled MSI-X, MSI vector 0 if
MSI, else the INTx line (level, until IRQ_STATUS is cleared).
A descriptor with a PASID is refused (EINVAL) when the function has no PASID
capability or the PASID does not fit its width.
"""
import errno

from ..identity import BarSpec, Identity
from ..dma import DmaError
from ..model import Model, MsixLayout

ID, VERSION, SRC_LO, SRC_HI, DST_LO, DST_HI = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14
LENGTH, OP, PATTERN, PASID, CONTROL, DOORBELL = 0x18, 0x1C, 0x20, 0x24, 0x28, 0x2C
STATUS, ERROR, FAULT_LO, FAULT_HI, COMPLETED, IRQ_STATUS, MAX_LENGTH = 0x30, 0x34, 0x38, 0x3C, 0x40, 0x44, 0x48

OP_COPY, OP_FILL = 0, 1
CTL_PASID_VALID, CTL_IRQ = 0x1, 0x2
STATUS_DONE, STATUS_ERROR = 0x1, 0x2
ID_VALUE, VERSION_VALUE, MAX_LENGTH_VALUE = 0x414D4449, 0x00010000, 1 << 20
CHUNK = 4096

_WRITABLE = {SRC_LO, SRC_HI, DST_LO, DST_HI, LENGTH, OP, PATTERN, PASID, CONTROL}


def _rom_image():
    name = b"iommufs dma-engine"
    return b"\x55\xaa" + bytes([1]) + bytes(29) + name + bytes(512 - 32 - len(name))


class DmaEngine(Model):
    """The dma-engine model; register map in the module docstring."""

    kind = "dma-engine"
    identity = Identity(vendor=0xD1F5, device=0x0001, class_code=0x080100, revision=1,
                        subsystem_vendor=0xD1F5, subsystem_id=0x0001, interrupt_pin=1)
    bars = (BarSpec(0x1000, is64=True), None, BarSpec(0x1000))
    rom = _rom_image()
    rom_size = 0x800
    msi_vectors = 1
    msix = MsixLayout(4, table_bar=2, table_offset=0x000, pba_bar=2, pba_offset=0x800)

    def __init__(self):
        super().__init__()
        self.ops = self.bytes_moved = self.faults = 0
        self.reset()

    def reset(self):
        """Power-on: every register 0 except the read-only identification."""
        self.regs = {off: 0 for off in range(0, 0x4C, 4)}
        if self.fn is not None:
            self.fn.intx_set(False)

    # -- register file ---------------------------------------------------------

    def _reg_read(self, off):
        return {ID: ID_VALUE, VERSION: VERSION_VALUE, MAX_LENGTH: MAX_LENGTH_VALUE,
                DOORBELL: 0}.get(off, self.regs.get(off, 0))

    def bar_read(self, bar, offset, size):
        if bar != 0:
            return 0
        if size == 8:
            return self.bar_read(bar, offset, 4) | self.bar_read(bar, offset + 4, 4) << 32
        base = offset & ~3
        return (self._reg_read(base) >> (8 * (offset - base))) & ((1 << (8 * size)) - 1)

    def bar_write(self, bar, offset, size, value):
        if bar != 0:
            return
        if size == 8:
            self.bar_write(bar, offset, 4, value & 0xFFFFFFFF)
            self.bar_write(bar, offset + 4, 4, value >> 32)
            return
        base, shift = offset & ~3, 8 * (offset & 3)
        mask = ((1 << (8 * size)) - 1) << shift
        value = (value << shift) & mask
        if base in _WRITABLE:
            self.regs[base] = (self.regs[base] & ~mask) | value
        elif base == STATUS:
            self.regs[STATUS] &= ~value
        elif base == IRQ_STATUS:
            self.regs[IRQ_STATUS] &= ~value
            if not self.regs[IRQ_STATUS] & 1:
                self.fn.intx_set(False)
        elif base == DOORBELL:
            self.run()

    # -- the operation ----------------------------------------------------------

    def _addr(self, lo):
        return self.regs[lo] | self.regs[lo + 4] << 32

    def run(self):
        """Execute the descriptor through the DMA port, synchronously."""
        r = self.regs
        length, op = r[LENGTH], r[OP]
        pasid = r[PASID] & 0xFFFFF if r[CONTROL] & CTL_PASID_VALID else None
        r[STATUS] &= ~(STATUS_DONE | STATUS_ERROR)
        try:
            self._validate(op, length, pasid)
            if op == OP_COPY:
                self._copy(self._addr(SRC_LO), self._addr(DST_LO), length, pasid)
            else:
                pattern = r[PATTERN].to_bytes(4, "little") * (CHUNK // 4)
                self._fill(self._addr(DST_LO), length, pattern, pasid)
        except DmaError as e:
            self._fail(e.errno, e.iova)
        else:
            r[ERROR] = 0
            r[STATUS] |= STATUS_DONE
            r[COMPLETED] = (r[COMPLETED] + 1) & 0xFFFFFFFF
            self.ops += 1
        if r[CONTROL] & CTL_IRQ:
            self._interrupt()

    def _validate(self, op, length, pasid):
        bits = self.fn.options.pasid_bits if self.fn else 0
        if op not in (OP_COPY, OP_FILL) or length > MAX_LENGTH_VALUE:
            raise DmaError(errno.EINVAL, 0, "bad descriptor")
        if pasid is not None and (not bits or pasid >= 1 << bits):
            raise DmaError(errno.EINVAL, 0, "PASID not supported by the function")

    def _copy(self, src, dst, length, pasid):
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            self.fn.dma_write(dst + done, self.fn.dma_read(src + done, n, pasid=pasid), pasid=pasid)
            done += n
            self.bytes_moved += n

    def _fill(self, dst, length, pattern, pasid):
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            self.fn.dma_write(dst + done, pattern[:n], pasid=pasid)
            done += n
            self.bytes_moved += n

    def _fail(self, err, iova):
        r = self.regs
        r[ERROR] = err
        r[FAULT_LO], r[FAULT_HI] = iova & 0xFFFFFFFF, iova >> 32
        r[STATUS] |= STATUS_ERROR
        self.faults += 1

    def _interrupt(self):
        self.regs[IRQ_STATUS] |= 1
        kind = self.fn.irq_type()
        if kind == "msix":
            self.fn.msix_raise(0)
        elif kind == "msi":
            self.fn.msi_raise(0)
        else:
            self.fn.intx_set(True)

    def state(self):
        """Registers by name and operation counts, for ``info``."""
        names = {SRC_LO: "src_lo", SRC_HI: "src_hi", DST_LO: "dst_lo", DST_HI: "dst_hi",
                 LENGTH: "length", OP: "op", PATTERN: "pattern", PASID: "pasid", CONTROL: "control",
                 STATUS: "status", ERROR: "error", FAULT_LO: "fault_lo", FAULT_HI: "fault_hi",
                 COMPLETED: "completed", IRQ_STATUS: "irq_status"}
        return {"registers": {n: self.regs[o] for o, n in names.items()},
                "ops": self.ops, "bytes_moved": self.bytes_moved, "faults": self.faults}
