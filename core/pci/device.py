"""A PCI function as a VFIO device node shows it: regions, IRQs, reset.

:class:`PciDevice` joins config space (config.py), interrupts (irqs.py), the
MSI-X table (msix.py) and a model (model.py). Its face to the VFIO handlers
is sans-IO: decoded arguments in, bytes/numbers out, UapiError(errno) with
the kernel's errno. Its face to the model is DMA through the injected port,
gated by Bus Master Enable, and interrupt raising.
"""
import errno
from collections import namedtuple

from ..errors import UapiError
from . import caps
from . import consts as C
from .config import ConfigSpace
from .dma import DmaError
from .identity import BarSpec, FunctionOptions
from .irqs import Irqs
from .msix import MsixTable

RegionInfo = namedtuple("RegionInfo", "flags size offset")
DeviceInfo = namedtuple("DeviceInfo", "flags num_regions num_irqs")

_MASK = (1 << C.OFFSET_SHIFT) - 1


def region_offset(index):
    """File offset of region ``index`` (vfio-device.md §1.2): index << 40."""
    return index << C.OFFSET_SHIFT


def split_offset(offset):
    """(index, position) of a file offset on a VFIO node (§1.2)."""
    return offset >> C.OFFSET_SHIFT, offset & _MASK


class PciDevice:
    """One emulated PCI function behind a VFIO node.

    ``model``: a model.Model; ``dma``: the DMA port (dma.py);
    ``options``: FunctionOptions from the topology.
    """

    def __init__(self, model, dma, options=None):
        self.model = model
        self.dma_port = dma
        self.options = options or FunctionOptions()
        self.counters = {"config_reads": 0, "config_writes": 0, "bar_reads": 0, "bar_writes": 0,
                         "dma_reads": 0, "dma_writes": 0, "dma_bytes_read": 0, "dma_bytes_written": 0,
                         "dma_faults": 0, "dma_refused": 0, "resets": 0}
        self._build_config()
        self._released = False
        model.attach(self)

    # -- construction ---------------------------------------------------------

    def _build_config(self):
        model, opts = self.model, self.options
        if not opts.pcie and (opts.ats or opts.pri or opts.pasid_bits):
            raise ValueError("ATS, PRI and PASID are PCI Express extended capabilities")
        bars = list(model.bars) + [None] * (6 - len(model.bars))
        for i, spec in enumerate(bars):
            if isinstance(spec, BarSpec) and spec.is64:
                if i == 5 or bars[i + 1] is not None:
                    raise ValueError(f"64-bit BAR{i} needs BAR{i + 1} free")
                bars[i + 1] = "upper"
        self.bars = bars
        blocks = [caps.PowerManagement(no_soft_reset=opts.pm_no_soft_reset)]
        self.pm = blocks[0]
        self.msi = caps.Msi(model.msi_vectors) if model.msi_vectors else None
        if self.msi:
            blocks.append(self.msi)
        self.msix_cap = None
        if model.msix is not None:
            m = model.msix
            self.msix_cap = caps.Msix(m.vectors, m.table_bar, m.table_offset, m.pba_bar, m.pba_offset)
            blocks.append(self.msix_cap)
        blocks += model.vendor_caps()
        self.exp = caps.PciExpress(flr=opts.flr) if opts.pcie else None
        if self.exp:
            blocks.append(self.exp)
        ext = []
        if opts.pcie:
            if opts.pasid_bits:
                ext.append(caps.Pasid(opts.pasid_bits))
            if opts.ats:
                ext.append(caps.Ats())
            if opts.pri:
                ext.append(caps.Pri(opts.pri_capacity, pasid_required=bool(opts.pasid_bits)))
        self.config = ConfigSpace(model.identity, bars, model.rom_size, blocks, ext,
                                  pcie=opts.pcie, events=self)
        self.msix = MsixTable(self.msix_cap) if self.msix_cap else None
        if self.msix:
            for bar, off, end in ((self.msix_cap.table_bar, *self.msix.table_range(self.msix_cap.table_bar)),
                                  (self.msix_cap.pba_bar, *self.msix.pba_range(self.msix_cap.pba_bar))):
                spec = bars[bar]
                if not isinstance(spec, BarSpec) or end > spec.size:
                    raise ValueError("MSI-X table/PBA outside its BAR (§8.1 step 9)")
        # Per BAR: the MSI-X table and PBA ranges it holds, looked up on every access.
        self._msix_ranges = {bar: (self.msix.table_range(bar), self.msix.pba_range(bar))
                             for bar in {self.msix_cap.table_bar, self.msix_cap.pba_bar}} if self.msix else {}
        self.irqs = Irqs(self.config, self.msi, self.msix, pcie=opts.pcie)
        self.irqs.sync_config()

    # -- config-space events (ConfigSpace calls these) ------------------------

    def command_written(self):
        cmd = self.config.command()
        # IO/MEM are virtual and also reach the function (§5.1).
        self.config.hw_set_bits(C.COMMAND, 2, C.CMD_IO | C.CMD_MEMORY, cmd)
        self.irqs.set_virq_disabled(bool(cmd & C.CMD_INTX_DISABLE))

    def power_state_written(self, state):
        pmcsr = self.pm.offset + caps.PowerManagement.PMCSR
        old = self.config.hw_get(pmcsr, 2) & 0x3
        self.config.hw_set_bits(pmcsr, 2, 0x3, state)
        if old == 3 and state == 0 and not self.options.pm_no_soft_reset:
            self._function_reset()      # PM reset: D3hot -> D0 with No_Soft_Reset clear (§13.2)

    def flr(self):
        self._function_reset()          # Initiate FLR with DEVCAP.FLR (§5.2)

    def msi_state(self):
        return self.irqs.type == C.MSI, self.irqs.msi_qmax

    def msi_mask_written(self):
        self.irqs.msi_mask_written()

    def gap_read(self, pos, size):
        return self.model.config_gap_read(pos, size)

    def gap_write(self, pos, size, value):
        self.model.config_gap_write(pos, size, value)

    # -- state the gates read -------------------------------------------------

    def d3hot(self):
        """True while PMCSR.PowerState is D3hot (§13.2)."""
        return self.config.hw[self.pm.offset + caps.PowerManagement.PMCSR] & 0x3 == 3

    def memory_enabled(self):
        """The virtual Command.MEM bit, which gates memory BAR access (§4.2, §5.1)."""
        return bool(self.config.vconfig[C.COMMAND] & C.CMD_MEMORY)   # MEM is a virtual bit

    def bus_master(self):
        """Command.BusMaster as the function holds it (§5.1: it reaches hardware)."""
        return bool(self.config.hw_get(C.COMMAND, 2) & C.CMD_MASTER)

    # -- VFIO: info -----------------------------------------------------------

    def device_info(self):
        """VFIO_DEVICE_GET_INFO fields (§3.1): PCI|RESET, 9 regions, 5 IRQs.
        Reset always works on an emulated function (§3.5)."""
        return DeviceInfo(C.DEVICE_FLAGS_PCI | C.DEVICE_FLAGS_RESET, C.NUM_REGIONS, C.NUM_IRQS)

    def region_info(self, index):
        """VFIO_DEVICE_GET_REGION_INFO for ``index`` (§3.2): RegionInfo(flags,
        size bytes, offset = index << 40). Any index 0-8 is valid except VGA
        on a non-VGA function (EINVAL); >= 9 EINVAL. Never MMAP for now."""
        if not 0 <= index < C.NUM_REGIONS or index == C.VGA_REGION:
            raise UapiError(errno.EINVAL, "no such region")
        rw = C.REGION_READ | C.REGION_WRITE
        if index == C.CONFIG_REGION:
            return RegionInfo(rw, self.config.size, region_offset(index))
        if index == C.ROM_REGION:
            size = self.model.rom_size if self.model.rom is not None else 0
            return RegionInfo(C.REGION_READ if size else 0, size, region_offset(index))
        spec = self.bars[index]
        if not isinstance(spec, BarSpec):
            return RegionInfo(0, 0, region_offset(index))
        return RegionInfo(rw, spec.size, region_offset(index))

    def irq_info(self, index):
        """VFIO_DEVICE_GET_IRQ_INFO (§3.3): (flags, count); EINVAL per §3.3."""
        return self.irqs.info(index)

    # -- VFIO: regions (§4) ---------------------------------------------------

    def region_read(self, index, offset, size):
        """pread of ``size`` bytes at ``offset`` into region ``index``.

        Returns bytes, short at a BAR's end. Errors (UapiError): EINVAL for
        a bad index, an absent BAR/ROM or an offset past the end; EIO on a
        memory BAR (or ROM) while Command.MEM is clear or the function is in
        D3hot; EFAULT for a config access past the region (§4, §4.1, §4.2).
        """
        if size == 0:
            return b""
        self._check_index(index)
        if index == C.CONFIG_REGION:
            self.counters["config_reads"] += 1
            return self.config.read(offset, size)
        if index == C.ROM_REGION:
            return self._rom_read(offset, size)
        return self._bar_rw(index, offset, size, None)

    def region_write(self, index, offset, data):
        """pwrite of ``data`` at ``offset`` into region ``index``; returns
        bytes written (short at a BAR's end). Errors as region_read, and
        EINVAL for the ROM (§4.2)."""
        data = bytes(data)
        if not data:
            return 0
        self._check_index(index)
        if index == C.CONFIG_REGION:
            self.counters["config_writes"] += 1
            return self.config.write(offset, data)
        if index == C.ROM_REGION:
            raise UapiError(errno.EINVAL, "the ROM is read-only")      # before any other check
        return len(self._bar_rw(index, offset, len(data), data))

    def pread(self, offset, size):
        """region_read at a VFIO node file offset (``index << 40 | position``, §1.2)."""
        index, pos = split_offset(offset)
        return self.region_read(index, pos, size)

    def pwrite(self, offset, data):
        """region_write at a VFIO node file offset (§1.2)."""
        index, pos = split_offset(offset)
        return self.region_write(index, pos, data)

    def _check_index(self, index):
        if not 0 <= index < C.NUM_REGIONS or index == C.VGA_REGION:
            raise UapiError(errno.EINVAL, "no such region")

    def _rom_extent(self, offset, count):
        if self.model.rom is None or not self.model.rom_size:
            raise UapiError(errno.EINVAL, "no ROM")
        if offset < 0 or offset >= self.model.rom_size:
            raise UapiError(errno.EINVAL, "offset past the ROM")
        return min(count, self.model.rom_size - offset)

    def _rom_read(self, offset, size):
        count = self._rom_extent(offset, size)
        if not self.memory_enabled() or self.d3hot():
            raise UapiError(errno.EIO, "memory decode disabled (verify for the ROM)")
        image = self.model.rom
        out = image[offset:offset + count]
        return bytes(out) + b"\xff" * (count - len(out))   # past the image: 0xff (§4.2)

    def _bar_rw(self, bar, offset, count, data):
        spec = self.bars[bar]
        if not isinstance(spec, BarSpec):
            raise UapiError(errno.EINVAL, "BAR not implemented")
        if offset < 0 or offset >= spec.size:
            raise UapiError(errno.EINVAL, "offset past the BAR")
        count = min(count, spec.size - offset)
        if not spec.io and (not self.memory_enabled() or self.d3hot()):
            raise UapiError(errno.EIO, "memory decode disabled")
        table, pba = self._msix_ranges.get(bar, (None, None))
        out = bytearray()
        pos, end = offset, offset + count
        while pos < end:
            if table and table[0] <= pos < table[1]:
                # The MSI-X table belongs to the host: 0xff, writes dropped (§4.2).
                n = min(end, table[1]) - pos
                out += b"\xff" * n
                pos += n
                continue
            n = self._piece(pos, end - pos, table[0] if table else None)
            if data is None:
                self.counters["bar_reads"] += 1
                if pba and pba[0] <= pos < pba[1]:
                    value = int.from_bytes(self.msix.pba_bytes()[pos - pba[0]:pos - pba[0] + n], "little")
                else:
                    value = self.model.bar_read(bar, pos, n)
                out += (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
            else:
                self.counters["bar_writes"] += 1
                chunk = data[pos - offset:pos - offset + n]
                out += chunk
                if not (pba and pba[0] <= pos < pba[1]):
                    self.model.bar_write(bar, pos, n, int.from_bytes(chunk, "little"))
            pos += n
        return bytes(out)

    @staticmethod
    def _piece(pos, remaining, stop):
        """Largest naturally aligned access (8/4/2/1 bytes) that does not run
        into the excluded MSI-X table at ``stop`` (§4.2)."""
        for n in (8, 4, 2, 1):
            if remaining >= n and pos % n == 0 and (stop is None or not pos < stop < pos + n):
                return n
        return 1

    # -- VFIO: interrupts -----------------------------------------------------

    def set_irqs(self, flags, index, start, count, data=b"", sinks=None, argsz=None):
        """VFIO_DEVICE_SET_IRQS (§3.4, §6) after the 20-byte header was read.

        ``data``: the bytes after the header (DATA_BOOL: u8 per interrupt,
        DATA_EVENTFD: s32 fd per interrupt); ``argsz``: the struct's argsz
        (default 20 + len(data)); ``sinks``: fd -> signal sink, or fd ->
        UapiError for an fd the transport could not take (EBADF, EINVAL).
        Returns 0; raises UapiError (EINVAL, EFAULT, ENOTTY, EBADF...) in the
        kernel's order. See Irqs.set_irqs.
        """
        if argsz is None:
            argsz = C.IRQ_SET_HEADER + len(data)
        return self.irqs.set_irqs(argsz, flags, index, start, count, data, sinks)

    def set_irqs_fds(self, flags, index, start, count, data=b"", argsz=None):
        """The caller's fds (>= 0) a SET_IRQS needs resolved, after the §3.4
        checks that precede the data copy (raises their UapiError); empty
        unless DATA_EVENTFD."""
        if argsz is None:
            argsz = C.IRQ_SET_HEADER + len(data)
        return self.irqs.fds_to_resolve(argsz, flags, index, start, count, data)

    def intx_resample(self):
        """The transport saw the INTx unmask eventfd signalled: unmask (§6.1)."""
        self.irqs.intx_unmask_now()

    # -- reset and release ----------------------------------------------------

    def reset(self):
        """VFIO_DEVICE_RESET (§3.5, §7): the model and the function's config
        registers return to power-on (Bus Master clear, D0, capability
        controls), the INTx line drops, nothing stays pending. vfio's
        virtual state (BARs, ROM BAR, virtual Command bits, Interrupt Line,
        MSI address/data) and its SET_IRQS bindings are kept."""
        self._function_reset()

    def _function_reset(self):
        self.counters["resets"] += 1
        self.model.reset()
        self.config.reset_hardware()
        cmd = self.config.command()
        self.config.hw_set_bits(C.COMMAND, 2, C.CMD_IO | C.CMD_MEMORY, cmd)
        self.irqs.device_reset()

    def release(self):
        """The device fd's last close (§6.4): interrupts torn down and every
        sink closed, Bus Master cleared, the function reset, the model's
        resources released."""
        if self._released:
            return
        self._released = True
        self.irqs.release()
        self.config.hw_set_bits(C.COMMAND, 2, C.CMD_MASTER, 0)
        self._function_reset()
        self.model.release()

    # -- the model's side -----------------------------------------------------

    def _dma_gate(self, iova):
        if not self.bus_master() or self.d3hot() or self._released:
            self.counters["dma_refused"] += 1
            raise DmaError(errno.EIO, iova, "Bus Master Enable clear (virtio-pci.md §1.4)")

    def dma_read(self, iova, length, pasid=None):
        """Model DMA from memory: ``length`` bytes at IOVA ``iova`` (in the
        address space of ``pasid``, None = RID). Raises DmaError: EIO while
        Bus Master Enable is clear or in D3hot; the port's errno otherwise."""
        return self.dma_read_spans([(iova, length)], pasid)

    def dma_write(self, iova, data, pasid=None):
        """Model DMA to memory: ``data`` at IOVA ``iova``; errors as dma_read."""
        self.dma_write_spans([(iova, len(data))], data, pasid)

    def dma_read_spans(self, spans, pasid=None):
        """Model DMA gathering ``spans`` ([(iova, bytes)], e.g. the readable
        buffers of a virtqueue chain) into one bytes object; errors as
        dma_read. A port with ``read_spans`` moves them in one go."""
        port = self.dma_port
        if len(spans) == 1:
            move = lambda: port.read(spans[0][0], spans[0][1], pasid=pasid)   # noqa: E731
        elif hasattr(port, "read_spans"):
            move = lambda: port.read_spans(spans, pasid=pasid)   # noqa: E731
        else:
            move = lambda: b"".join(port.read(a, n, pasid=pasid) for a, n in spans)   # noqa: E731
        data = self._dma(spans, move)
        self.counters["dma_reads"] += 1
        self.counters["dma_bytes_read"] += len(data)
        return data

    def dma_write_spans(self, spans, data, pasid=None):
        """Model DMA scattering ``data`` over ``spans`` ([(iova, bytes)]
        summing to len(data)); errors as dma_read."""
        port, data = self.dma_port, bytes(data)
        if len(spans) == 1:
            move = lambda: port.write(spans[0][0], data, pasid=pasid)   # noqa: E731
        elif hasattr(port, "write_spans"):
            move = lambda: port.write_spans(spans, data, pasid=pasid)   # noqa: E731
        else:
            def move():
                done = 0
                for a, n in spans:
                    port.write(a, data[done:done + n], pasid=pasid)
                    done += n
        self._dma(spans, move)
        self.counters["dma_writes"] += 1
        self.counters["dma_bytes_written"] += len(data)

    def _dma(self, spans, move):
        # Bus Master gates every DMA; a port's refusal is counted as a fault.
        self._dma_gate(spans[0][0] if spans else 0)
        try:
            return move()
        except DmaError:
            self.counters["dma_faults"] += 1
            raise

    def msix_raise(self, vector):
        """Send MSI-X ``vector`` (see Irqs.msix_raise)."""
        self.irqs.msix_raise(vector)

    def msi_raise(self, vector):
        """Send MSI ``vector`` (see Irqs.msi_raise)."""
        self.irqs.msi_raise(vector)

    def intx_set(self, level):
        """Drive the INTx line (see Irqs.intx_set)."""
        self.irqs.intx_set(level)

    def irq_type(self):
        """The interrupt type SET_IRQS enabled: "intx", "msi", "msix" or None."""
        return {C.INTX: "intx", C.MSI: "msi", C.MSIX: "msix"}.get(self.irqs.type)

    def state(self):
        """JSON-able state for ``info``: model, interrupts, counters."""
        return {"model": self.model.kind, "model_state": self.model.state(),
                "command": self.config.command(), "bus_master": self.bus_master(),
                "power_state": "D3hot" if self.d3hot() else "D0",
                "irqs": self.irqs.state(), "counters": dict(self.counters)}
