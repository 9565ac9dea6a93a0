"""ioat: one channel of Intel QuickData / CBDMA, as the kernel's drivers see it.

The function the VFIO selftests' userspace ioat driver
(tools/testing/selftests/vfio/lib/drivers/ioat/ioat.c) binds to: vendor
0x8086, device 0x2021 (PCI_DEVICE_ID_INTEL_IOAT_SKX), class 0x088000 (system
peripheral, other), revision 4 and subsystem 8086:0000 as Sky Lake-E CBDMA
functions report them, I/OAT version 3.3. Register numbers are those of the
kernel's drivers/dma/ioat/registers.h and the descriptor that of hw.h.

BARs: BAR0 (+BAR1) 64-bit memory, 16 KiB: global registers at 0x00, channel
0 at 0x80 (IOAT_CHANNEL_MMIO_SIZE), the MSI-X table (1 vector) at 0x2000 and
its PBA at 0x3000. Capabilities: PM, MSI-X, PCIe; no MSI (verify against
lspci of a real CBDMA function).

Global registers (BAR0):

| off  | size | name        | access | value / meaning |
|------|------|-------------|--------|-----------------|
| 0x00 | 1    | CHANCNT     | RO     | 1 channel |
| 0x01 | 1    | XFERCAP     | RO     | 12: at most 4 KiB per descriptor (see XFERCAP_LOG) |
| 0x02 | 1    | GENCTRL     | RW     | bit 0 debug enable, no effect |
| 0x03 | 1    | INTRCTRL    | RW/RO  | bit 0 master enable, bit 3 MSI-X vector control (RW); bit 1 INT_STATUS = ATTNSTATUS != 0, bit 2 INT = INT_STATUS and master enable (RO) |
| 0x04 | 4    | ATTNSTATUS  | RO     | bit 0: channel 0 raised its interrupt and was not rearmed since |
| 0x08 | 1    | VER         | RO     | 0x33 (IOAT_VER_3_3) |
| 0x0C | 2    | INTRDELAY   | RW     | bits 13:0, no effect (no coalescing) |
| 0x10 | 4    | DMA_CAP     | RO     | 0: plain copies only |

Channel 0 registers (BAR0 + 0x80):

| off  | size | name        | access | meaning |
|------|------|-------------|--------|---------|
| 0x00 | 2    | CHANCTRL    | RW     | INT_REARM 0x1 (cleared when the channel interrupts), ERR_COMPLETION_EN 0x4, ANY_ERR_ABORT_EN 0x8, ERR_INT_EN 0x10, ... |
| 0x02 | 2    | DMA_COMP    | RO     | IOAT_DMA_COMP_V2 |
| 0x04 | 1    | CHANCMD     | RW     | RESET 0x20 (done at once, so it reads back 0), SUSPEND 0x04, ABORT 0x08 |
| 0x06 | 2    | DMACOUNT    | RW     | writing it runs descriptors until the channel's count reaches it (mod 2^16) |
| 0x08 | 8    | CHANSTS     | RO     | bits 63:6 the last completed descriptor's address, bits 2:0 ACTIVE 0 / DONE 1 / SUSPENDED 2 / HALTED 3 |
| 0x10 | 8    | CHAINADDR   | RW     | the first descriptor; writing it restarts the chain and zeroes the count |
| 0x18 | 8    | CHANCMP     | RW     | where CHANSTS is written when a descriptor asks (compl_write) |
| 0x20 | 8    | CDAR        | RO     | the descriptor being (last) processed |
| 0x28 | 4    | CHANERR     | RW1C   | IOAT_CHANERR_* of the halt |
| 0x2C | 4    | CHANERR_MASK| RW     | no effect |

Config space (raw registers vfio passes through): DMAUNCERRSTS 0x148 and
CHANERR_INT 0x180 (RW1C), CHANERRMASK_INT 0x184 (RW); nothing sets them.

Descriptors (64 bytes, 64-byte aligned, in client memory at IOVAs): size
u32 @0, ctl u32 @4 (bit 0 int_en, bit 3 compl_write, bit 5 null, bits 31:24
op: 0x00 copy), src u64 @8, dst u64 @16, next u64 @24. The channel runs
them synchronously inside the DMACOUNT write, so a driver that polls
CHANSTS next already sees DONE or HALTED.

Errors halt the channel (CHANSTS HALTED, CHANERR set, the count stops): an
IOMMU fault reading the source is READ_DATA_ERR, writing the destination
WRITE_DATA_ERR (the two the kernel's ioat driver treats as recoverable,
IOAT_CHANERR_RECOVER_MASK), fetching a descriptor CHAIN_ADDR_VALUE_ERR
(from CHAINADDR) or NEXT_ADDR_ERR (from a next pointer), a misaligned
descriptor NEXT_DESC_ALIGN_ERR, an op other than copy CONTROL_ERR, a size
over XFERCAP LENGTH_ERR, a completion write that faults
COMPLETION_ADDR_ERR. A halted channel with CHANERR set ignores DMACOUNT
until CHANERR is cleared or the channel reset.

Interrupts: a descriptor with int_en (or a halt with CHANCTRL.ERR_INT_EN)
while CHANCTRL.INT_REARM is set clears INT_REARM, sets ATTNSTATUS bit 0 and
sends MSI-X vector 0 when INTRCTRL has MSIX_VECTOR_CONTROL or the master
enable; MSI is absent; INTx needs the master enable and stays asserted until
CHANCTRL is written with INT_REARM (the driver's rearm) or the channel
resets.
"""
from ..dma import DmaError
from ..identity import BarSpec, Identity
from ..model import Model, MsixLayout

# Global registers.
CHANCNT, XFERCAP, GENCTRL, INTRCTRL, ATTNSTATUS, VER = 0x00, 0x01, 0x02, 0x03, 0x04, 0x08
INTRDELAY, DMA_CAP = 0x0C, 0x10
INTRCTRL_MASTER_INT_EN, INTRCTRL_INT_STATUS, INTRCTRL_INT, INTRCTRL_MSIX_VECTOR_CONTROL = 0x01, 0x02, 0x04, 0x08
VER_3_3 = 0x33

# Channel 0 registers, absolute BAR0 offsets.
CHANNEL = 0x80
CHANCTRL, DMA_COMP, CHANCMD, DMACOUNT = CHANNEL + 0x00, CHANNEL + 0x02, CHANNEL + 0x04, CHANNEL + 0x06
CHANSTS, CHAINADDR, CHANCMP, CDAR = CHANNEL + 0x08, CHANNEL + 0x10, CHANNEL + 0x18, CHANNEL + 0x20
CHANERR, CHANERR_MASK = CHANNEL + 0x28, CHANNEL + 0x2C

CHANCTRL_INT_REARM, CHANCTRL_ERR_COMPLETION_EN = 0x0001, 0x0004
CHANCTRL_ANY_ERR_ABORT_EN, CHANCTRL_ERR_INT_EN = 0x0008, 0x0010
DMA_COMP_V2 = 0x0002
CHANCMD_RESET, CHANCMD_RESUME, CHANCMD_ABORT, CHANCMD_SUSPEND = 0x20, 0x10, 0x08, 0x04
STS_ACTIVE, STS_DONE, STS_SUSPENDED, STS_HALTED = 0, 1, 2, 3
STS_STATUS, STS_ADDR = 0x7, ~0x3F & ((1 << 64) - 1)

ERR_NEXT_ADDR, ERR_NEXT_DESC_ALIGN, ERR_CHAIN_ADDR_VALUE = 0x0004, 0x0008, 0x0010
ERR_READ_DATA, ERR_WRITE_DATA, ERR_CONTROL, ERR_LENGTH = 0x0100, 0x0200, 0x0400, 0x0800
ERR_COMPLETION_ADDR = 0x1000

# Config-space registers.
PCI_DMAUNCERRSTS, PCI_CHANERR_INT, PCI_CHANERRMASK_INT = 0x148, 0x180, 0x184

# Descriptor control bits and ops.
CTL_INT_EN, CTL_COMPL_WRITE, CTL_NULL = 1 << 0, 1 << 3, 1 << 5
OP_COPY = 0x00
DESC_SIZE = 64

# Real CBDMA functions report more, but the selftest's memcpy_storm moves
# 65535 descriptors of 1 << XFERCAP bytes; at 4 KiB that is 256 MiB, which
# an emulator in Python moves within the test's 60 s.
XFERCAP_LOG = 12
CHUNK = 4096
MMIO_SIZE = 0x4000
REG_SPACE = 0x100

# name: (offset, size, writable bits); anything else in BAR0 reads 0 and
# ignores writes.
_REGS = {
    "chancnt": (CHANCNT, 1, 0), "xfercap": (XFERCAP, 1, 0), "genctrl": (GENCTRL, 1, 0x01),
    "intrctrl": (INTRCTRL, 1, INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL),
    "attnstatus": (ATTNSTATUS, 4, 0), "ver": (VER, 1, 0), "intrdelay": (INTRDELAY, 2, 0x3FFF),
    "dma_cap": (DMA_CAP, 4, 0),
    "chanctrl": (CHANCTRL, 2, 0xF33D), "dma_comp": (DMA_COMP, 2, 0), "chancmd": (CHANCMD, 1, 0xFF),
    "dmacount": (DMACOUNT, 2, 0xFFFF), "chansts": (CHANSTS, 8, 0),
    "chainaddr": (CHAINADDR, 8, (1 << 64) - 1), "chancmp": (CHANCMP, 8, (1 << 64) - 1),
    "cdar": (CDAR, 8, 0), "chanerr": (CHANERR, 4, 0), "chanerr_mask": (CHANERR_MASK, 4, 0xFFFFFFFF),
}
_BY_OFFSET = {off: (name, size, wmask) for name, (off, size, wmask) in _REGS.items()}


class Ioat(Model):
    """The ioat (CBDMA) model; registers and behaviour in the module docstring.

    The register file is a byte image of BAR0's first 256 bytes
    (``self.mmio``): reads have no side effects, so it is what a mapped BAR
    page would show.
    """

    kind = "ioat"
    identity = Identity(vendor=0x8086, device=0x2021, class_code=0x088000, revision=0x04,
                        subsystem_vendor=0x8086, subsystem_id=0x0000, interrupt_pin=1)
    bars = (BarSpec(MMIO_SIZE, is64=True), None)
    msi_vectors = 0
    msix = MsixLayout(1, table_bar=0, table_offset=0x2000, pba_bar=0, pba_offset=0x3000)

    def __init__(self):
        super().__init__()
        self.descriptors = self.bytes_moved = self.halts = self.interrupts = 0
        self.mmio = bytearray(REG_SPACE)
        self.reset()

    # -- the register image ---------------------------------------------------

    def _get(self, off, size):
        return int.from_bytes(self.mmio[off:off + size], "little")

    def _set(self, off, size, value):
        self.mmio[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def reset(self):
        """Power-on (function reset): the identification registers, an idle
        halted channel, no errors, no interrupt, config registers cleared."""
        self.mmio[:] = bytes(REG_SPACE)
        self._set(CHANCNT, 1, 1)
        self._set(XFERCAP, 1, XFERCAP_LOG)
        self._set(VER, 1, VER_3_3)
        self._set(DMA_COMP, 2, DMA_COMP_V2)
        self.config = {PCI_DMAUNCERRSTS: 0, PCI_CHANERR_INT: 0, PCI_CHANERRMASK_INT: 0}
        self._channel_reset()
        if self.fn is not None:
            self.fn.intx_set(False)

    def _channel_reset(self):
        # CHANCMD.RESET: the channel forgets its chain and errors and halts,
        # which is the state ioat.c's reset waits for.
        for off in (CHANCTRL, DMACOUNT, CHAINADDR, CHANCMP, CDAR, CHANERR, CHANERR_MASK):
            self._set(off, _BY_OFFSET[off][1], 0)
        self._set(CHANSTS, 8, STS_HALTED)
        self.completed = 0
        self.next_desc = 0
        self._set_attention(False)

    def _set_attention(self, on):
        self._set(ATTNSTATUS, 4, 1 if on else 0)
        ctrl = self._get(INTRCTRL, 1) & ~(INTRCTRL_INT_STATUS | INTRCTRL_INT)
        if on:
            ctrl |= INTRCTRL_INT_STATUS
            if ctrl & INTRCTRL_MASTER_INT_EN:
                ctrl |= INTRCTRL_INT
        self._set(INTRCTRL, 1, ctrl)
        if not on and self.fn is not None:
            self.fn.intx_set(False)

    # -- BAR access -----------------------------------------------------------

    def bar_read(self, bar, offset, size):
        """Bytes of the register image; 0 past it."""
        if bar != 0 or offset >= REG_SPACE:
            return 0
        return self._get(offset, min(size, REG_SPACE - offset))

    def bar_write(self, bar, offset, size, value):
        """Merge the written bytes into each register they touch, then act on
        that register (a 64-bit register written as two dwords acts twice)."""
        if bar != 0 or offset >= REG_SPACE:
            return
        for start, (_name, rsize, wmask) in _BY_OFFSET.items():
            lo, hi = max(start, offset), min(start + rsize, offset + size)
            if lo >= hi:
                continue
            shift = 8 * (lo - start)
            bytemask = ((1 << (8 * (hi - lo))) - 1) << shift
            part = ((value >> (8 * (lo - offset))) << shift) & bytemask
            self._write_reg(start, rsize, wmask, bytemask, part)

    def _write_reg(self, off, size, wmask, bytemask, part):
        old = self._get(off, size)
        if off == CHANERR:
            self._set(CHANERR, 4, old & ~part)
            return
        if off == CHANCMD:
            self._command(part & bytemask)
            return
        self._set(off, size, (old & ~(wmask & bytemask)) | (part & wmask))
        if off == INTRCTRL:
            self._set_attention(bool(self._get(ATTNSTATUS, 4)))
        elif off == CHANCTRL and part & CHANCTRL_INT_REARM:
            self._set_attention(False)            # the driver's rearm acknowledges
        elif off == CHAINADDR:
            self.next_desc = self._get(CHAINADDR, 8)
            self.completed = 0
        elif off == DMACOUNT:
            self.run()

    def _command(self, cmd):
        if cmd & CHANCMD_RESET:
            self._channel_reset()
            return
        status = self._get(CHANSTS, 8) & STS_STATUS
        if cmd & CHANCMD_ABORT:
            self._set_status(STS_HALTED)
        elif cmd & CHANCMD_SUSPEND and status != STS_HALTED:
            self._set_status(STS_SUSPENDED)

    def _set_status(self, status):
        self._set(CHANSTS, 8, (self._get(CHANSTS, 8) & ~STS_STATUS) | status)

    # -- config registers (vfio's raw gaps) ----------------------------------

    def config_gap_read(self, offset, size):
        """DMAUNCERRSTS, CHANERR_INT and CHANERRMASK_INT; other gap bytes read 0."""
        value = 0
        for i in range(size):
            reg = (offset + i) & ~3
            if reg in self.config:
                value |= ((self.config[reg] >> (8 * ((offset + i) & 3))) & 0xFF) << (8 * i)
        return value

    def config_gap_write(self, offset, size, value):
        """The status registers are RW1C, the mask RW; other gap writes drop."""
        reg, shift = offset & ~3, 8 * (offset & 3)
        if reg not in self.config:
            return
        bits = (value << shift) & (((1 << (8 * size)) - 1) << shift)
        if reg == PCI_CHANERRMASK_INT:
            mask = ((1 << (8 * size)) - 1) << shift
            self.config[reg] = (self.config[reg] & ~mask) | bits
        else:
            self.config[reg] &= ~bits

    # -- the channel ------------------------------------------------------------

    def run(self):
        """Process descriptors until the completed count reaches DMACOUNT."""
        if self._get(CHANERR, 4):
            return
        target = self._get(DMACOUNT, 2)
        first = self.next_desc == self._get(CHAINADDR, 8) and self.completed == 0
        self._set_status(STS_ACTIVE)
        while self.completed != target:
            addr = self.next_desc
            err = self._descriptor(addr, first)
            first = False
            if err:
                self._halt(err)
                return
            self.completed = (self.completed + 1) & 0xFFFF
        self._set_status(STS_DONE)

    def _descriptor(self, addr, first):
        """Run the descriptor at ``addr``; the CHANERR bit of a failure, or 0."""
        fetch_err = ERR_CHAIN_ADDR_VALUE if first else ERR_NEXT_ADDR
        if addr & (DESC_SIZE - 1):
            return fetch_err if first else ERR_NEXT_DESC_ALIGN
        self._set(CDAR, 8, addr)
        try:
            raw = self.fn.dma_read(addr, DESC_SIZE)
        except DmaError:
            return fetch_err
        size = int.from_bytes(raw[0:4], "little")
        ctl = int.from_bytes(raw[4:8], "little")
        src = int.from_bytes(raw[8:16], "little")
        dst = int.from_bytes(raw[16:24], "little")
        self.next_desc = int.from_bytes(raw[24:32], "little")
        if not ctl & CTL_NULL:
            if ctl >> 24 != OP_COPY:
                return ERR_CONTROL
            if size > 1 << XFERCAP_LOG:
                return ERR_LENGTH
            err = self._copy(src, dst, size)
            if err:
                return err
        self.descriptors += 1
        self._set(CHANSTS, 8, (addr & STS_ADDR) | STS_ACTIVE)
        if ctl & CTL_COMPL_WRITE and not self._write_completion():
            return ERR_COMPLETION_ADDR
        if ctl & CTL_INT_EN:
            self._interrupt()
        return 0

    def _copy(self, src, dst, size):
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            try:
                data = self.fn.dma_read(src + done, n)
            except DmaError:
                return ERR_READ_DATA
            try:
                self.fn.dma_write(dst + done, data)
            except DmaError:
                return ERR_WRITE_DATA
            done += n
            self.bytes_moved += n
        return 0

    def _write_completion(self):
        try:
            self.fn.dma_write(self._get(CHANCMP, 8), self.mmio[CHANSTS:CHANSTS + 8])
        except DmaError:
            return False
        return True

    def _halt(self, err):
        self.halts += 1
        self._set(CHANERR, 4, self._get(CHANERR, 4) | err)
        self._set_status(STS_HALTED)
        ctrl = self._get(CHANCTRL, 2)
        if ctrl & CHANCTRL_ERR_COMPLETION_EN and err != ERR_COMPLETION_ADDR:
            self._write_completion()
        if ctrl & CHANCTRL_ERR_INT_EN:
            self._interrupt()

    def _interrupt(self):
        if not self._get(CHANCTRL, 2) & CHANCTRL_INT_REARM:
            return
        self._set(CHANCTRL, 2, self._get(CHANCTRL, 2) & ~CHANCTRL_INT_REARM)
        self._set_attention(True)
        intrctrl = self._get(INTRCTRL, 1)
        kind = self.fn.irq_type()
        if kind == "msix" and intrctrl & (INTRCTRL_MSIX_VECTOR_CONTROL | INTRCTRL_MASTER_INT_EN):
            self.fn.msix_raise(0)
        elif kind == "intx" and intrctrl & INTRCTRL_MASTER_INT_EN:
            self.fn.intx_set(True)
        else:
            return
        self.interrupts += 1

    def state(self):
        """Registers by name, the channel's position and counts, for ``info``."""
        return {"registers": {name: self._get(off, size) for name, (off, size, _) in _REGS.items()},
                "config": {f"{off:#x}": v for off, v in self.config.items()},
                "completed": self.completed, "next_descriptor": self.next_desc,
                "descriptors": self.descriptors, "bytes_moved": self.bytes_moved,
                "halts": self.halts, "interrupts": self.interrupts}
