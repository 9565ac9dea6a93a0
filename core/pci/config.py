"""PCI configuration space as vfio-pci shows it to userspace.

One generic read/write path (vfio-device.md §4.1) over the permission tables
of caps.py (§5): accesses are cut into chunks that never cross a dword or a
block boundary, and each chunk is merged from the function's registers
("hardware", ``hw``) and vfio's virtual copy (``vconfig``) by the owner's
masks. Bytes owned by no block (gaps) pass through raw to hardware, as
vfio-pci's unassigned_perms do (§5): to the events' ``gap_read``/``gap_write``,
i.e. the model's own config registers (0 and dropped unless it has some).
"""
import errno

from ..errors import UapiError
from . import caps
from . import consts as C


def _get(buf, off, size):
    return int.from_bytes(buf[off:off + size], "little")


def _put(buf, off, size, value):
    buf[off:off + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")


class Header(caps.Block):
    """The type-0 header (§13.1) with vfio's permissions (§5.1).

    ``bars`` is six entries: a BarSpec, None (unimplemented) or the string
    "upper" for the upper half of a 64-bit BAR. ``rom_size`` 0 = no ROM.
    """

    def __init__(self, identity, bars, rom_size):
        super().__init__(C.HEADER_SIZE)
        self.bars = bars
        self.rom_size = rom_size
        has_io = any(getattr(b, "io", False) for b in bars)
        has_mem = rom_size or any(b not in (None, "upper") and not b.io for b in bars)
        self.field(C.VENDOR_ID, 2, identity.vendor, virt=0xFFFF)
        self.field(C.DEVICE_ID, 2, identity.device, virt=0xFFFF)
        # IO/MEM/INTx-Disable are virtual (mirrored to hardware for IO/MEM),
        # the rest reaches hardware, which implements BusMaster, Parity, SERR.
        cmd_write = C.CMD_MASTER | 0x0040 | 0x0100 | C.CMD_INTX_DISABLE
        cmd_write |= (C.CMD_IO if has_io else 0) | (C.CMD_MEMORY if has_mem else 0)
        self.field(C.COMMAND, 2, 0, virt=C.CMD_IO | C.CMD_MEMORY | C.CMD_INTX_DISABLE, write=cmd_write)
        self.field(C.STATUS, 2, 0, virt=C.STATUS_CAP_LIST)
        self.field(C.REVISION_ID, 1, identity.revision)
        self.field(C.CLASS_PROG, 3, identity.class_code)
        self.field(C.CACHE_LINE_SIZE, 1, 0, write=0xFF)
        self.field(C.LATENCY_TIMER, 1, 0, write=0xFF)
        for i in range(6):
            self.field(C.BAR_FIRST + 4 * i, 4, 0, virt=0xFFFFFFFF, write=0xFFFFFFFF)
        self.field(C.SUBSYSTEM_VENDOR_ID, 2, identity.subsystem_vendor)
        self.field(C.SUBSYSTEM_ID, 2, identity.subsystem_id)
        self.field(C.ROM_ADDRESS, 4, 0, virt=0xFFFFFFFF, write=0xFFFFFFFF)
        self.field(C.CAPABILITY_LIST, 1, 0, virt=0xFF)
        self.field(C.INTERRUPT_LINE, 1, 0, virt=0xFF, write=0xFF)
        self.field(C.INTERRUPT_PIN, 1, identity.interrupt_pin, virt=0xFF)

    def bar_view(self, cs, i):
        """BAR register i as read: ``(written & ~(len-1)) | type bits``, 0 if absent (§5.1)."""
        spec = self.bars[i]
        raw = cs.vconfig_get(C.BAR_FIRST + 4 * i, 4)
        if spec is None:
            return 0
        if spec == "upper":
            return raw & ((~(self.bars[i - 1].size - 1)) >> 32) & 0xFFFFFFFF
        low_mask = 0xFFFFFFFC if spec.io else 0xFFFFFFF0
        return (raw & ~(spec.size - 1) & low_mask) | spec.type_bits()

    def rom_view(self, cs):
        """ROM BAR as read: ``written & (~(romlen-1) | enable)``, 0 without ROM (§5.1)."""
        if not self.rom_size:
            return 0
        raw = cs.vconfig_get(C.ROM_ADDRESS, 4)
        return raw & (((~(self.rom_size - 1)) & C.ROM_ADDRESS_MASK) | C.ROM_ENABLE)

    def on_read(self, cs, rel, size, value):
        # Chunks never cross a dword, so a chunk lies inside one register.
        reg = rel & ~3
        if C.BAR_FIRST <= reg < C.BAR_FIRST + 24:
            view = self.bar_view(cs, (reg - C.BAR_FIRST) // 4)
        elif reg == C.ROM_ADDRESS:
            view = self.rom_view(cs)
        else:
            return value
        return (view >> ((rel - reg) * 8)) & ((1 << (size * 8)) - 1)

    def on_write(self, cs, rel, size, value):
        if rel <= C.COMMAND < rel + size or rel <= C.COMMAND + 1 < rel + size:
            cs.events.command_written()


class NullEvents:
    """Config-space side effects ignored: for a ConfigSpace used alone."""

    def command_written(self):
        pass

    def power_state_written(self, state):
        pass

    def flr(self):
        pass

    def msi_state(self):
        return False, 0

    def msi_mask_written(self):
        pass

    def gap_read(self, pos, size):
        return 0

    def gap_write(self, pos, size, value):
        pass


class ConfigSpace:
    """The config region (index 7) of one function.

    ``blocks``: standard capabilities in chain order (placed from 0x40,
    dword-aligned); ``ext_blocks``: extended ones (placed from 0x100, only in
    a 4096-byte space). ``events`` receives side effects: ``command_written()``,
    ``power_state_written(state)``, ``flr()``, ``msi_state() -> (enabled,
    qmax)``, ``msi_mask_written()``, ``gap_read(pos, size) -> int`` and
    ``gap_write(pos, size, value)`` for bytes no block owns (see PciDevice).
    """

    def __init__(self, identity, bars, rom_size=0, blocks=(), ext_blocks=(), pcie=True, events=None):
        self.size = C.CFG_SIZE_PCIE if pcie else C.CFG_SIZE_PCI
        self.events = events or NullEvents()
        self.header = Header(identity, bars, rom_size)
        self.blocks = [self.header]
        self.owner = [None] * self.size
        self.hw = bytearray(self.size)
        self.vconfig = bytearray(self.size)
        self.virt = bytearray(self.size)
        self.wmask = bytearray(self.size)
        self._place(self.header, 0)
        pos, prev = C.HEADER_SIZE, None
        for blk in blocks:
            pos = (pos + 3) & ~3
            if pos + blk.length > C.CFG_SIZE_PCI:
                raise ValueError("standard capabilities do not fit below 0x100")
            self._place(blk, pos)
            if prev is None:
                self.vconfig[C.CAPABILITY_LIST] = pos
            else:
                self.vconfig[prev.offset + 1] = pos
            prev, pos = blk, pos + blk.length
        if blocks:
            self.vconfig[C.STATUS] |= C.STATUS_CAP_LIST
        if ext_blocks and not pcie:
            raise ValueError("extended capabilities need a 4096-byte config space")
        self._place_extended(list(ext_blocks))
        self.power_on = bytes(self.hw)

    def _place(self, blk, pos):
        blk.offset = pos
        end = pos + blk.length
        self.hw[pos:end] = blk.image
        self.vconfig[pos:end] = bytes(a & b for a, b in zip(blk.image, blk.virt))
        self.virt[pos:end] = blk.virt
        self.wmask[pos:end] = blk.write
        self.owner[pos:end] = [blk] * blk.length
        if blk is not self.header:
            self.blocks.append(blk)

    def _place_extended(self, ext_blocks):
        pos = C.EXT_CAP_START
        for blk in ext_blocks:
            self._place(blk, pos)
            if blk.hidden:
                # Hidden bytes read as zeroes and ignore writes (§5.3) (verify).
                self.virt[pos:pos + blk.length] = b"\xff" * blk.length
                self.wmask[pos:pos + blk.length] = bytes(blk.length)
                self.vconfig[pos:pos + blk.length] = bytes(blk.length)
            pos = (pos + blk.length + 3) & ~3
        visible = [b for b in ext_blocks if not b.hidden]
        # Rebuild the chain over visible caps (§5.3): Next of each visible cap
        # points at the next visible one; a hidden first cap keeps only Next.
        for i, blk in enumerate(visible):
            nxt = visible[i + 1].offset if i + 1 < len(visible) else 0
            _put(self.vconfig, blk.offset, 4, blk.cap_id | (blk.version << 16) | (nxt << 20))
        if ext_blocks and ext_blocks[0].hidden:
            first_next = visible[0].offset if visible else 0
            _put(self.vconfig, C.EXT_CAP_START, 4, first_next << 20)

    # -- the generic path (§4.1) ------------------------------------------

    def _chunks(self, pos, count):
        while count:
            n = 4 if count >= 4 and pos % 4 == 0 else 2 if count >= 2 and pos % 2 == 0 else 1
            while n > 1 and self.owner[pos + n - 1] is not self.owner[pos]:
                n //= 2
            yield pos, n
            pos += n
            count -= n

    def _check(self, pos, count):
        if pos < 0 or pos >= self.size or pos + count > self.size:
            raise UapiError(errno.EFAULT, "config access outside the region (§4.1)")

    def read(self, pos, count):
        """Read ``count`` bytes at ``pos`` (bytes into the region).

        Any count; 0 returns b"" before any check; an access that overruns the
        region raises UapiError(EFAULT) and reads nothing (§4, §4.1).
        """
        if count == 0:
            return b""
        self._check(pos, count)
        if count in (1, 2, 4) and pos % count == 0 and self.owner[pos] is self.owner[pos + count - 1]:
            return self._read_chunk(pos, count).to_bytes(count, "little")      # the common case
        out = bytearray()
        for p, n in self._chunks(pos, count):
            out += self._read_chunk(p, n).to_bytes(n, "little")
        return bytes(out)

    def write(self, pos, data):
        """Write ``data`` at ``pos``; returns len(data). Read-only bits are
        dropped silently; EFAULT for an overrun, nothing written (§4.1)."""
        data = bytes(data)
        if not data:
            return 0
        self._check(pos, len(data))
        for p, n in self._chunks(pos, len(data)):
            self._write_chunk(p, n, int.from_bytes(data[p - pos:p - pos + n], "little"))
        return len(data)

    def _read_chunk(self, p, n):
        owner = self.owner[p]
        if owner is None:
            return self.events.gap_read(p, n) & ((1 << (8 * n)) - 1)
        return owner.on_read(self, p - owner.offset, n, self.merged(p, n))

    def _write_chunk(self, p, n, value):
        if self.owner[p] is None:
            self.events.gap_write(p, n, value)
            return
        vm, wm = _get(self.virt, p, n), _get(self.wmask, p, n)
        to_virt, to_hw = wm & vm, wm & ~vm
        _put(self.vconfig, p, n, (_get(self.vconfig, p, n) & ~to_virt) | (value & to_virt))
        _put(self.hw, p, n, (_get(self.hw, p, n) & ~to_hw) | (value & to_hw))
        owner = self.owner[p]
        if owner is not None:
            owner.on_write(self, p - owner.offset, n, value)

    # -- accessors for the function and its blocks ------------------------

    def merged(self, off, size):
        """Hardware bits merged with virtual bits, no read hooks."""
        vm = _get(self.virt, off, size)
        return (_get(self.hw, off, size) & ~vm) | (_get(self.vconfig, off, size) & vm)

    def hw_get(self, off, size):
        """The function's own register value (non-virtual view)."""
        return _get(self.hw, off, size)

    def hw_set_bits(self, off, size, mask, value):
        """The function changes its own register bits (e.g. INTx Status, MSI-X Enable)."""
        _put(self.hw, off, size, (_get(self.hw, off, size) & ~mask) | (value & mask))

    def vconfig_get(self, off, size):
        """vfio's virtual copy, as written by the user (BARs before masking)."""
        return _get(self.vconfig, off, size)

    def reset_hardware(self):
        """Function-level reset: the function's registers return to power-on
        values; vfio's virtual bits (BARs, ROM, virtual Command bits,
        Interrupt Line, MSI address/data) are kept (§3.5, §7)."""
        self.hw[:] = self.power_on

    def find(self, cap_id, extended=False):
        """The block with ``cap_id`` (hidden ones included), or None."""
        for blk in self.blocks:
            if blk.cap_id == cap_id and blk.extended == extended:
                return blk
        return None

    def command(self):
        """Command register as the user reads it."""
        return self.merged(C.COMMAND, 2)
