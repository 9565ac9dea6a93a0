"""PciDevice as a VFIO handler sees it: regions (vfio-device.md §3.2, §4),
IRQ info and SET_IRQS (§3.3, §3.4, §6), DMA gating, reset (§3.5, §7)."""
import errno

import pytest

from core.errors import UapiError
from core.pci import DmaError, FunctionOptions, PciDevice, region_offset, split_offset
from core.pci import consts as C
from core.pci.models import dma_engine as D
from core.pci.models.dma_engine import DmaEngine
from test_pci_fakes import (ProbeModel, RamPort, Sink, caps_walk, cfg_read, cfg_write, enable, fds,
                            irq_set)

EVENTFD_TRIGGER = C.DATA_EVENTFD | C.ACTION_TRIGGER
NONE_TRIGGER = C.DATA_NONE | C.ACTION_TRIGGER
BOOL_TRIGGER = C.DATA_BOOL | C.ACTION_TRIGGER


def probe(**opts):
    return PciDevice(ProbeModel(), RamPort(), FunctionOptions(**opts))


def errno_of(fn, *args):
    with pytest.raises(UapiError) as e:
        fn(*args)
    return e.value.errno


# -- regions ---------------------------------------------------------------------


def test_offsets_encode_the_index():
    assert region_offset(7) == 7 << 40
    assert split_offset((2 << 40) | 0x123) == (2, 0x123)


def test_region_info():
    dev = probe()
    rw = C.REGION_READ | C.REGION_WRITE
    assert dev.region_info(0) == (rw, 0x4000, 0)
    assert dev.region_info(1) == (rw, 0x100, 1 << 40)
    assert dev.region_info(2) == (rw, 0x100000, 2 << 40)
    assert dev.region_info(3) == (0, 0, 3 << 40)                 # upper half of BAR2
    assert dev.region_info(4) == (rw, 0x200000000, 4 << 40)
    assert dev.region_info(6) == (C.REGION_READ, 0x1000, 6 << 40)
    assert dev.region_info(7) == (rw, 4096, 7 << 40)
    assert errno_of(dev.region_info, 8) == errno.EINVAL          # not a VGA device
    assert errno_of(dev.region_info, 9) == errno.EINVAL
    assert not any(dev.region_info(i).flags & C.REGION_MMAP for i in range(8))
    assert dev.device_info() == (C.DEVICE_FLAGS_PCI | C.DEVICE_FLAGS_RESET, 9, 5)


def test_memory_bar_access_needs_memory_enable():
    dev = probe()
    assert errno_of(dev.region_read, 0, 0, 4) == errno.EIO
    assert errno_of(dev.region_write, 0, 0, b"1234") == errno.EIO
    assert errno_of(dev.region_read, 6, 0, 2) == errno.EIO       # ROM too (verify)
    enable(dev, C.CMD_MEMORY)
    assert dev.region_write(0, 0x10, b"\x01\x02\x03\x04") == 4
    assert dev.region_read(0, 0x10, 4) == b"\x01\x02\x03\x04"
    cfg_write(dev, C.COMMAND, 2, 0)
    assert errno_of(dev.region_read, 0, 0x10, 4) == errno.EIO


def test_io_bar_is_not_gated_by_memory_enable():
    dev = probe()
    assert dev.region_write(1, 0, b"\xaa") == 1
    assert dev.region_read(1, 0, 1) == b"\xaa"


def test_bar_edges_and_absent_bars():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    assert errno_of(dev.region_read, 0, 0x4000, 1) == errno.EINVAL
    assert len(dev.region_read(0, 0x3FFE, 8)) == 2                 # clipped at the end
    assert dev.region_write(0, 0x3FFF, b"abcd") == 1
    assert errno_of(dev.region_read, 3, 0, 4) == errno.EINVAL      # upper half: not a BAR
    assert errno_of(dev.region_read, 8, 0, 4) == errno.EINVAL      # VGA
    assert errno_of(dev.region_read, 9, 0, 4) == errno.EINVAL
    assert dev.region_read(9, 0, 0) == b""                         # count 0 before any check


def test_bar_accesses_are_split_into_aligned_pieces():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    dev.model.accesses.clear()
    dev.region_read(0, 0x101, 15)
    assert [(off, n) for _, _, off, n in dev.model.accesses] == [
        (0x101, 1), (0x102, 2), (0x104, 4), (0x108, 8)]


def test_msix_table_reads_ff_and_drops_writes_pba_reads_pending_bits():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    dev.model.accesses.clear()
    assert dev.region_write(0, 0x1FFC, bytes(range(8))) == 8       # 4 bytes before the table, 4 into it
    assert dev.region_read(0, 0x2000, 128) == b"\xff" * 128
    assert dev.region_read(0, 0x1FFC, 8) == bytes(range(4)) + b"\xff" * 4
    assert ("w", 0, 0x2000, 4) not in dev.model.accesses
    assert dev.region_read(0, 0x3000, 8) == bytes(8)


def test_rom_region_reads_image_then_ff_and_refuses_writes():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    rom = dev.region_read(6, 0, 0x1000)
    assert rom[:100] == ProbeModel.rom and rom[100:] == b"\xff" * (0x1000 - 100)
    assert len(dev.region_read(6, 0xFFE, 16)) == 2
    assert errno_of(dev.region_read, 6, 0x1000, 1) == errno.EINVAL
    assert errno_of(dev.region_write, 6, 0, b"x") == errno.EINVAL


def test_d3hot_gates_bar_access():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    pm = dict((cid, off) for off, cid in caps_walk(dev))[C.CAP_ID_PM]
    cfg_write(dev, pm + 4, 2, 3)
    assert errno_of(dev.region_read, 0, 0, 4) == errno.EIO
    cfg_write(dev, pm + 4, 2, 0)
    assert dev.region_read(0, 0, 4) == bytes(4)


# -- IRQ info --------------------------------------------------------------------


def test_irq_info_counts_from_capabilities():
    dev = probe()
    intx_flags = C.IRQ_INFO_EVENTFD | C.IRQ_INFO_MASKABLE | C.IRQ_INFO_AUTOMASKED
    other = C.IRQ_INFO_EVENTFD | C.IRQ_INFO_NORESIZE
    assert dev.irq_info(C.INTX) == (intx_flags, 1)
    assert dev.irq_info(C.MSI) == (other, 4)
    assert dev.irq_info(C.MSIX) == (other, 8)
    assert dev.irq_info(C.ERR) == (other, 1)
    assert dev.irq_info(C.REQ) == (other, 1)
    assert errno_of(dev.irq_info, 5) == errno.EINVAL
    assert errno_of(probe(pcie=False).irq_info, C.ERR) == errno.EINVAL


# -- SET_IRQS: the order of checks (§3.4) ---------------------------------------


def test_set_irqs_errnos_in_kernel_order():
    dev = probe()
    s = Sink()
    # step 3: header checks
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(3), {3: s}, 19) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, 5, 0, 1, fds(3), {3: s}) == errno.EINVAL
    assert errno_of(irq_set, dev, NONE_TRIGGER, C.MSIX, 1, 0xFFFFFFFE) == errno.EINVAL
    assert errno_of(irq_set, dev, NONE_TRIGGER | 0x40, C.MSIX, 0, 1) == errno.EINVAL
    # step 4: start/count against the index's count (also for disable on an empty index)
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 8, 1, fds(3), {3: s}) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 4, 5, fds(*[3] * 5), {3: s}) == errno.EINVAL
    class NoPin(ProbeModel):
        identity = ProbeModel.identity.__class__(**{**ProbeModel.identity.__dict__, "interrupt_pin": 0})
    nopin = PciDevice(NoPin(), RamPort())
    assert errno_of(irq_set, nopin, NONE_TRIGGER, C.INTX, 0, 0) == errno.EINVAL
    # step 5: exactly one data type; argsz covers the data
    assert errno_of(irq_set, dev, C.DATA_NONE | C.DATA_BOOL | C.ACTION_TRIGGER, C.MSIX, 0, 1) == errno.EINVAL
    assert errno_of(irq_set, dev, C.ACTION_TRIGGER, C.MSIX, 0, 1) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 2, fds(3, 3), {3: s}, 27) == errno.EINVAL
    # step 6: the data copy
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 2, fds(3), {3: s}, 28) == errno.EFAULT
    # step 7: no handler for the action
    assert errno_of(irq_set, dev, C.DATA_NONE | C.ACTION_MASK, C.MSIX, 0, 1) == errno.ENOTTY
    assert errno_of(irq_set, dev, C.DATA_NONE | C.ACTION_UNMASK, C.MSI, 0, 1) == errno.ENOTTY
    assert errno_of(irq_set, dev, C.DATA_NONE | C.ACTION_MASK | C.ACTION_UNMASK, C.INTX, 0, 1) == errno.ENOTTY
    assert errno_of(irq_set, dev, C.DATA_NONE, C.INTX, 0, 1) == errno.ENOTTY
    # §6: semantics
    assert errno_of(irq_set, dev, NONE_TRIGGER, C.MSIX, 0, 1) == errno.EINVAL     # loopback, not enabled
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(4), {}) == errno.EBADF
    bad = UapiError(errno.EINVAL, "not an eventfd")
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(4), {4: bad}) == errno.EINVAL
    assert dev.irqs.type is None
    assert s.closed == 0


def test_set_irqs_fds_to_resolve():
    dev = probe()
    assert dev.set_irqs_fds(EVENTFD_TRIGGER, C.MSIX, 0, 3, fds(5, -1, 5)) == [5]
    assert dev.set_irqs_fds(NONE_TRIGGER, C.MSIX, 0, 3) == []
    assert dev.set_irqs_fds(C.DATA_EVENTFD | C.ACTION_MASK, C.INTX, 0, 1, fds(5)) == []   # ENOTTY comes first
    assert dev.set_irqs_fds(C.DATA_EVENTFD | C.ACTION_UNMASK, C.INTX, 0, 1, fds(5)) == [5]
    with pytest.raises(UapiError):
        dev.set_irqs_fds(EVENTFD_TRIGGER, C.MSIX, 7, 3, fds(5, -1, 5))


def test_msi_and_msix_enable_loopback_disable():
    dev = probe()
    sinks = {10 + i: Sink(i) for i in range(4)}
    assert irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 4, fds(10, 11, 12, 13), sinks) == 0
    assert all(s.take() == 0 for s in sinks.values())
    irq_set(dev, NONE_TRIGGER, C.MSIX, 2, 1)
    assert [sinks[10 + i].take() for i in range(4)] == [0, 0, 1, 0]
    irq_set(dev, BOOL_TRIGGER, C.MSIX, 0, 4, b"\x01\x00\x00\x01")
    assert [sinks[10 + i].take() for i in range(4)] == [1, 0, 0, 1]
    # Only one type at a time; NORESIZE: vectors past those enabled fail.
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSI, 0, 1, fds(10), sinks) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(10), sinks) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 4, 1, fds(10), sinks) == errno.EINVAL
    # Rebinding a vector replaces (and closes) its sink.
    new = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 1, 1, fds(20), {20: new})
    assert sinks[11].closed == 1
    assert cfg_read(dev, dict((c, o) for o, c in caps_walk(dev))[C.CAP_ID_MSIX] + 2, 2) & 0x8000
    irq_set(dev, NONE_TRIGGER, C.MSIX, 0, 0)
    assert dev.irqs.type is None and all(s.closed == 1 for s in sinks.values()) and new.closed == 1
    # MSI: 3 vectors enable qmax 2 (4 vectors) and the control register shows it.
    m = {30: Sink(), 31: Sink(), 32: Sink()}
    irq_set(dev, EVENTFD_TRIGGER, C.MSI, 0, 3, fds(30, 31, 32), m)
    msi = dict((c, o) for o, c in caps_walk(dev))[C.CAP_ID_MSI]
    assert cfg_read(dev, msi + 2, 2) & 0x7 == 0x5
    dev.msi_raise(1)
    assert m[31].take() == 1


def test_failed_enable_unwinds():
    dev = probe()
    a = Sink()
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 2, fds(1, 2), {1: a}) == errno.EBADF
    assert dev.irqs.type is None and a.closed == 1


def test_intx_automask_and_unmask():
    dev = probe()
    t = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(7), {7: t})
    dev.intx_set(True)
    assert t.take() == 1
    assert cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    dev.intx_set(True)
    assert t.take() == 0                                       # automasked
    irq_set(dev, C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1)
    assert t.take() == 1                                       # still asserted: fires again, masked
    dev.intx_set(False)
    irq_set(dev, C.DATA_BOOL | C.ACTION_UNMASK, C.INTX, 0, 1, b"\x01")
    assert t.take() == 0 and not dev.irqs.intx_masked
    assert not cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    # MASK blocks; a masked assertion fires at UNMASK.
    irq_set(dev, C.DATA_NONE | C.ACTION_MASK, C.INTX, 0, 1)
    dev.intx_set(True)
    assert t.take() == 0
    irq_set(dev, C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1)
    assert t.take() == 1
    assert errno_of(irq_set, dev, C.DATA_EVENTFD | C.ACTION_MASK, C.INTX, 0, 1, fds(7), {7: t}) == errno.ENOTTY
    # The unmask eventfd (resample): a signal on it unmasks.
    r = Sink()
    irq_set(dev, C.DATA_EVENTFD | C.ACTION_UNMASK, C.INTX, 0, 1, fds(8), {8: r})
    dev.intx_resample()
    assert t.take() == 1
    # Loopback trigger ignores the mask.
    irq_set(dev, NONE_TRIGGER, C.INTX, 0, 1)
    assert t.take() == 1
    irq_set(dev, NONE_TRIGGER, C.INTX, 0, 0)
    assert dev.irqs.type is None and t.closed == 1 and r.closed == 1
    assert errno_of(irq_set, dev, C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1) == errno.EINVAL


def test_intx_disable_bit_masks_and_sets_initial_mask():
    dev = probe()
    t = Sink()
    enable(dev, C.CMD_INTX_DISABLE)
    irq_set(dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(7), {7: t})
    dev.intx_set(True)
    irq_set(dev, NONE_TRIGGER, C.INTX, 0, 1)
    assert t.take() == 0                                       # virq_disabled blocks even loopback
    irq_set(dev, C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1)
    assert t.take() == 0 and dev.irqs.intx_masked             # UNMASK cannot beat INTx-Disable
    cfg_write(dev, C.COMMAND, 2, 0)
    assert t.take() == 1                                       # clearing unmasks: the line fires


def test_intx_enable_with_no_eventfd_and_with_msi_active():
    dev = probe()
    irq_set(dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(-1))
    assert dev.irq_type() == "intx"
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSI, 0, 1, fds(-1)) == errno.EINVAL


def test_msix_masked_vector_sets_pba_and_fires_on_unmask():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    a, b = Sink(), Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 2, fds(1, -1), {1: a})
    dev.msix_raise(1)                                          # vector 1 has no trigger: masked
    assert dev.region_read(0, 0x3000, 8) == (0b10).to_bytes(8, "little")
    dev.msix_raise(0)
    assert a.take() == 1
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 1, 1, fds(2), {2: b})
    assert b.take() == 1
    assert dev.region_read(0, 0x3000, 8) == bytes(8)
    dev.msix_raise(5)                                          # not enabled: masked, pending
    assert dev.region_read(0, 0x3000, 1) == b"\x20"


def test_msix_raise_dropped_when_disabled():
    dev = probe()
    dev.msix_raise(0)
    assert dev.irqs.dropped["msix"] == 1


def test_msi_per_vector_mask_holds_pending_until_unmasked():
    dev = probe()
    msi = dict((c, o) for o, c in caps_walk(dev))[C.CAP_ID_MSI]
    mask, pending = msi + 0x10, msi + 0x14
    s = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.MSI, 0, 1, fds(3), {3: s})
    cfg_write(dev, mask, 4, 1)
    dev.msi_raise(0)
    assert s.take() == 0 and cfg_read(dev, pending, 4) == 1
    cfg_write(dev, pending, 4, 0)                              # pending bits are read-only
    assert cfg_read(dev, pending, 4) == 1
    cfg_write(dev, mask, 4, 0)
    assert s.take() == 1 and cfg_read(dev, pending, 4) == 0


def test_err_and_req_triggers():
    dev = probe()
    assert errno_of(irq_set, dev, NONE_TRIGGER, C.ERR, 0, 1) == errno.EINVAL       # none registered
    assert errno_of(irq_set, dev, BOOL_TRIGGER, C.REQ, 0, 0) == errno.EINVAL
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.REQ, 0, 0) == errno.EINVAL
    e, r = Sink(), Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.ERR, 0, 1, fds(5), {5: e})
    irq_set(dev, EVENTFD_TRIGGER, C.REQ, 0, 1, fds(6), {6: r})
    irq_set(dev, NONE_TRIGGER, C.ERR, 0, 1)
    irq_set(dev, BOOL_TRIGGER, C.REQ, 0, 1, b"\x01")
    assert (e.take(), r.take()) == (1, 1)
    irq_set(dev, EVENTFD_TRIGGER, C.REQ, 0, 1, fds(-2))                           # < -1: no change
    assert dev.irqs.req_trigger is r
    irq_set(dev, EVENTFD_TRIGGER, C.REQ, 0, 1, fds(-1))
    assert dev.irqs.req_trigger is None and r.closed == 1
    irq_set(dev, NONE_TRIGGER, C.ERR, 0, 0)
    assert dev.irqs.err_trigger is None and e.closed == 1


# -- DMA, reset, release --------------------------------------------------------


def engine(**opts):
    port = RamPort(size=0x10000)
    dev = PciDevice(DmaEngine(), port, FunctionOptions(**opts))
    return dev, port


def regw(dev, off, value):
    dev.region_write(0, off, value.to_bytes(4, "little"))


def regr(dev, off):
    return int.from_bytes(dev.region_read(0, off, 4), "little")


def test_bus_master_clear_refuses_dma():
    dev, port = engine()
    enable(dev, C.CMD_MEMORY)
    port.put(0x1000, b"hello")
    for off, v in ((D.SRC_LO, 0x1000), (D.DST_LO, 0x2000), (D.LENGTH, 5), (D.OP, D.OP_COPY)):
        regw(dev, off, v)
    regw(dev, D.DOORBELL, 1)
    assert regr(dev, D.STATUS) == D.STATUS_ERROR and regr(dev, D.ERROR) == errno.EIO
    assert port.log == [] and dev.counters["dma_refused"] == 1
    with pytest.raises(DmaError):
        dev.dma_read(0, 1)
    enable(dev, C.CMD_MASTER)
    regw(dev, D.DOORBELL, 1)
    assert regr(dev, D.STATUS) == D.STATUS_DONE and port.get(0x2000, 5) == b"hello"
    assert dev.counters["dma_bytes_read"] == 5 and dev.counters["dma_bytes_written"] == 5


def test_reset_returns_to_power_on():
    dev, port = engine()
    enable(dev, C.CMD_MEMORY | C.CMD_MASTER)
    cfg_write(dev, C.BAR_FIRST, 4, 0xFEB00000)
    cfg_write(dev, C.INTERRUPT_LINE, 1, 11)
    exp = dict((c, o) for o, c in caps_walk(dev))[C.CAP_ID_EXP]
    cfg_write(dev, exp + 0x28, 2, 0x0010)                        # DevCtl2: a hardware bit
    regw(dev, D.SRC_LO, 0x1234)
    t = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(3), {3: t})
    regw(dev, D.CONTROL, D.CTL_IRQ)
    regw(dev, D.DOORBELL, 1)
    assert t.take() == 1 and cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    dev.reset()
    assert regr(dev, D.SRC_LO) == 0 and regr(dev, D.IRQ_STATUS) == 0
    assert cfg_read(dev, exp + 0x28, 2) == 0
    assert not cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    assert not dev.bus_master()                                  # hardware bit: cleared
    # vfio's virtual state is kept (§3.5, §7): BARs, MEM, Interrupt Line, the INTx trigger.
    assert cfg_read(dev, C.BAR_FIRST, 4) == 0xFEB00004
    assert cfg_read(dev, C.COMMAND, 2) == C.CMD_MEMORY
    assert cfg_read(dev, C.INTERRUPT_LINE, 1) == 11
    assert dev.irq_type() == "intx" and t.closed == 0


def test_release_closes_every_sink():
    dev, _ = engine()
    sinks = {i: Sink() for i in range(1, 5)}
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 4, fds(1, 2, 3, 3), sinks)
    e = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.ERR, 0, 1, fds(9), {9: e})
    dev.release()
    assert [sinks[i].closed for i in range(1, 5)] == [1, 1, 1, 0] and e.closed == 1
    assert dev.irq_type() is None
    with pytest.raises(DmaError):
        dev.dma_read(0, 1)


def test_state_counts():
    dev, _ = engine()
    enable(dev, C.CMD_MEMORY)
    regw(dev, D.LENGTH, 1)
    st = dev.state()
    assert st["model"] == "dma-engine" and st["counters"]["bar_writes"] == 1
    assert st["counters"]["config_writes"] == 1
    assert st["model_state"]["registers"]["length"] == 1


def test_msix_function_mask_holds_every_vector_until_cleared():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    msix = dict((c, o) for o, c in caps_walk(dev))[C.CAP_ID_MSIX]
    a, b = Sink(), Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 2, fds(1, 2), {1: a, 2: b})
    dev.irqs.set_msix_function_mask(True)
    assert cfg_read(dev, msix + 2, 2) & 0xC000 == 0xC000
    dev.msix_raise(0)
    dev.msix_raise(1)
    assert (a.take(), b.take()) == (0, 0) and dev.region_read(0, 0x3000, 1) == b"\x03"
    dev.irqs.set_msix_function_mask(False)
    assert (a.take(), b.take()) == (1, 1) and dev.region_read(0, 0x3000, 1) == b"\x00"


def test_pread_pwrite_decode_the_file_offset():
    dev = probe()
    enable(dev, C.CMD_MEMORY)
    assert dev.pread(region_offset(C.CONFIG_REGION), 2) == b"\x34\x12"
    assert dev.pwrite(region_offset(0) + 0x10, b"\x99") == 1
    assert dev.pread(0x10, 1) == b"\x99"
    assert errno_of(dev.pread, region_offset(9), 4) == errno.EINVAL


def test_rebinding_the_same_sink_keeps_it_open():
    dev = probe()
    s = Sink()
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(4), {4: s})
    irq_set(dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(4), {4: s})
    assert s.closed == 0
    irq_set(dev, NONE_TRIGGER, C.MSIX, 0, 1)
    assert s.take() == 1
    irq_set(dev, NONE_TRIGGER, C.MSIX, 0, 0)
    assert s.closed == 1


def test_set_irqs_check_precedence():
    """When a call breaks several rules, the earliest check of §3.4/§6 wins."""
    dev = probe()
    s = Sink()
    # header (step 3) before the missing handler (step 7)
    assert errno_of(irq_set, dev, C.DATA_NONE | C.ACTION_MASK, C.MSIX, 0, 1, b"", None, 19) == errno.EINVAL
    # start/count (step 4) before the data type (step 5)
    assert errno_of(irq_set, dev, C.ACTION_TRIGGER, C.MSIX, 9, 1) == errno.EINVAL
    # the data copy (step 6) before the missing handler (step 7)
    assert errno_of(irq_set, dev, C.DATA_EVENTFD | C.ACTION_MASK, C.MSIX, 0, 1, b"", None, 24) == errno.EFAULT
    # the missing handler (step 7) before the fd is looked at (§6)
    assert errno_of(irq_set, dev, C.DATA_EVENTFD | C.ACTION_MASK, C.MSIX, 0, 1, fds(3), {}) == errno.ENOTTY
    # INTx MASK: "INTx not active" (EINVAL) before "eventfd mask unimplemented" (ENOTTY)
    assert errno_of(irq_set, dev, C.DATA_EVENTFD | C.ACTION_MASK, C.INTX, 0, 1, fds(3), {3: s}) == errno.EINVAL
    # MSI-X enable: another type active (EINVAL) before the bad fd (EBADF)
    irq_set(dev, EVENTFD_TRIGGER, C.INTX, 0, 1, fds(-1))
    assert errno_of(irq_set, dev, EVENTFD_TRIGGER, C.MSIX, 0, 1, fds(3), {}) == errno.EINVAL
