"""Config space as vfio-pci shows it (vfio-device.md §4.1, §5, §13)."""
import errno

import pytest
from hypothesis import given, settings, strategies as st

from core.errors import UapiError
from core.pci import FunctionOptions, PciDevice
from core.pci import consts as C
from core.pci.models.dma_engine import DmaEngine
from test_pci_fakes import ProbeModel, RamPort, caps_walk, cfg_read, cfg_write, ext_walk


def probe(**opts):
    return PciDevice(ProbeModel(), RamPort(), FunctionOptions(**opts))


def test_header_identity_and_power_on_values():
    dev = probe()
    assert cfg_read(dev, C.VENDOR_ID, 2) == 0x1234
    assert cfg_read(dev, C.DEVICE_ID, 2) == 0xABCD
    assert cfg_read(dev, C.COMMAND, 2) == 0
    assert cfg_read(dev, C.STATUS, 2) == C.STATUS_CAP_LIST
    assert cfg_read(dev, C.REVISION_ID, 1) == 7
    assert dev.region_read(C.CONFIG_REGION, C.CLASS_PROG, 3) == bytes([0x00, 0x80, 0x05])
    assert cfg_read(dev, C.HEADER_TYPE, 1) == 0
    assert cfg_read(dev, C.SUBSYSTEM_VENDOR_ID, 2) == 0x1234
    assert cfg_read(dev, C.SUBSYSTEM_ID, 2) == 0x0042
    assert cfg_read(dev, C.INTERRUPT_PIN, 1) == 1
    assert cfg_read(dev, C.INTERRUPT_LINE, 1) == 0


def test_identity_fields_are_read_only():
    dev = probe()
    before = dev.region_read(C.CONFIG_REGION, 0, 0x10)
    for off in (C.VENDOR_ID, C.DEVICE_ID, C.STATUS, C.REVISION_ID, C.CLASS_PROG, C.HEADER_TYPE):
        cfg_write(dev, off, 2, 0xFFFF)
    after = dev.region_read(C.CONFIG_REGION, 0, 0x10)
    assert after[:4] == before[:4] and after[6:12] == before[6:12] and after[14:16] == before[14:16]


def test_bar_sizing_reads_back_size_masks_and_type_bits():
    dev = probe()
    for i in range(6):
        cfg_write(dev, C.BAR_FIRST + 4 * i, 4, 0xFFFFFFFF)
    got = [cfg_read(dev, C.BAR_FIRST + 4 * i, 4) for i in range(6)]
    assert got == [
        0xFFFFC000,            # BAR0: 16 KiB, 32-bit memory
        0xFFFFFF01,            # BAR1: 256-byte I/O
        0xFFF0000C,            # BAR2: 1 MiB, 64-bit prefetchable
        0xFFFFFFFF,            # BAR3: upper half of BAR2
        0x0000000C,            # BAR4: 8 GiB, 64-bit prefetchable: no low address bits
        0xFFFFFFFE,            # BAR5: upper half, size bit 33
    ]


def test_bar_addresses_keep_the_aligned_bits_and_unimplemented_bars_read_zero():
    dev = PciDevice(DmaEngine(), RamPort())
    cfg_write(dev, C.BAR_FIRST, 4, 0xFEBF1234)
    cfg_write(dev, C.BAR_FIRST + 4, 4, 0x12)
    cfg_write(dev, C.BAR_FIRST + 12, 4, 0xFFFFFFFF)
    assert cfg_read(dev, C.BAR_FIRST, 4) == 0xFEBF1004
    assert cfg_read(dev, C.BAR_FIRST + 4, 4) == 0x12
    assert cfg_read(dev, C.BAR_FIRST + 12, 4) == 0          # BAR3 unimplemented
    # Partial accesses see the same view.
    assert cfg_read(dev, C.BAR_FIRST + 1, 1) == 0x10
    assert cfg_read(dev, C.BAR_FIRST, 2) == 0x1004


def test_rom_bar_sizing_and_enable_bit():
    dev = probe()
    cfg_write(dev, C.ROM_ADDRESS, 4, 0xFFFFF800)
    assert cfg_read(dev, C.ROM_ADDRESS, 4) == 0xFFFFF000      # 4 KiB ROM
    cfg_write(dev, C.ROM_ADDRESS, 4, 0xFFFFFFFF)
    assert cfg_read(dev, C.ROM_ADDRESS, 4) == 0xFFFFF001
    cfg_write(dev, C.ROM_ADDRESS, 4, 0xC0000001)
    assert cfg_read(dev, C.ROM_ADDRESS, 4) == 0xC0000001
    small = PciDevice(DmaEngine(), RamPort())
    cfg_write(small, C.ROM_ADDRESS, 4, 0xFFFFF800)
    assert cfg_read(small, C.ROM_ADDRESS, 4) == 0xFFFFF800    # 2 KiB ROM


def test_no_rom_reads_zero():
    class NoRom(ProbeModel):
        rom = None
        rom_size = 0
    dev = PciDevice(NoRom(), RamPort())
    cfg_write(dev, C.ROM_ADDRESS, 4, 0xFFFFFFFF)
    assert cfg_read(dev, C.ROM_ADDRESS, 4) == 0


def test_command_bits_read_back_and_status_is_read_only():
    dev = probe()
    cfg_write(dev, C.COMMAND, 2, 0x0407)
    assert cfg_read(dev, C.COMMAND, 2) == 0x0407
    cfg_write(dev, C.COMMAND, 2, 0x0000)
    assert cfg_read(dev, C.COMMAND, 2) == 0
    cfg_write(dev, C.STATUS, 2, 0xFFFF)
    assert cfg_read(dev, C.STATUS, 2) == C.STATUS_CAP_LIST
    # Unimplemented Command bits stay 0 (Special cycles, MWI, VGA snoop, fast b2b).
    cfg_write(dev, C.COMMAND, 2, 0xFFFF)
    assert cfg_read(dev, C.COMMAND, 2) == 0x0547


def test_interrupt_line_writable_pin_read_only():
    dev = probe()
    cfg_write(dev, C.INTERRUPT_LINE, 2, 0xFF0B)
    assert cfg_read(dev, C.INTERRUPT_LINE, 1) == 0x0B
    assert cfg_read(dev, C.INTERRUPT_PIN, 1) == 1


def test_capability_walk_reaches_pm_msi_msix_pcie():
    dev = probe()
    assert [cid for _, cid in caps_walk(dev)] == [C.CAP_ID_PM, C.CAP_ID_MSI, C.CAP_ID_MSIX, C.CAP_ID_EXP]
    assert all(off % 4 == 0 and off >= 0x40 for off, _ in caps_walk(dev))


def test_extended_caps_ats_pri_visible_pasid_hidden():
    dev = probe(ats=True, pri=True, pasid_bits=20)
    chain = ext_walk(dev)
    # PASID sat first at 0x100: its header is rewritten to ID 0 keeping Next (§5.3).
    assert chain[0][:2] == (0x100, 0)
    assert [cid for _, cid, _ in chain[1:]] == [C.EXT_CAP_ID_ATS, C.EXT_CAP_ID_PRI]
    assert all(ver == 1 for _, cid, ver in chain[1:])
    assert C.EXT_CAP_ID_PASID not in [cid for _, cid, _ in chain]
    # The hidden PASID capability's bytes read as zeroes.
    assert dev.region_read(C.CONFIG_REGION, 0x104, 4) == bytes(4)


def test_ext_caps_without_pasid_start_at_0x100():
    dev = probe(ats=True, pri=True)
    assert [(off, cid) for off, cid, _ in ext_walk(dev)] == [(0x100, C.EXT_CAP_ID_ATS), (0x108, C.EXT_CAP_ID_PRI)]
    assert cfg_read(dev, 0x108 + 8, 4) == 32          # outstanding page request capacity


def test_ats_and_pri_are_read_only():
    dev = probe(ats=True, pri=True)
    before = dev.region_read(C.CONFIG_REGION, 0x100, 0x18)
    cfg_write(dev, 0x106, 2, 0x8000 | 0x1F)       # ATS Enable + STU
    cfg_write(dev, 0x10C, 2, 0x0001)              # PRI Enable
    cfg_write(dev, 0x114, 4, 0xFFFFFFFF)          # PRI allocation
    assert dev.region_read(C.CONFIG_REGION, 0x100, 0x18) == before


def test_no_extended_caps_reads_zero_and_conventional_has_256_bytes():
    dev = probe()
    assert cfg_read(dev, 0x100, 4) == 0
    assert dev.region_info(C.CONFIG_REGION).size == 4096
    conv = probe(pcie=False)
    assert conv.region_info(C.CONFIG_REGION).size == 256
    assert C.CAP_ID_EXP not in [cid for _, cid in caps_walk(conv)]
    with pytest.raises(UapiError) as e:
        conv.region_read(C.CONFIG_REGION, 0x100, 4)
    assert e.value.errno == errno.EFAULT


@pytest.mark.parametrize("pos,count", [(4096, 1), (4095, 2), (4000, 100), (-1, 1), (0, 4097)])
def test_config_overrun_is_efault_and_transfers_nothing(pos, count):
    dev = probe()
    with pytest.raises(UapiError) as e:
        dev.region_read(C.CONFIG_REGION, pos, count)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(UapiError) as e:
        dev.region_write(C.CONFIG_REGION, pos, b"\x00" * count)
    assert e.value.errno == errno.EFAULT


def test_config_any_count_and_alignment():
    dev = probe()
    whole = dev.region_read(C.CONFIG_REGION, 0, 4096)
    assert len(whole) == 4096
    for pos, count in ((1, 4), (3, 7), (0x3F, 3), (0x41, 9), (4093, 3)):
        assert dev.region_read(C.CONFIG_REGION, pos, count) == whole[pos:pos + count]
    assert dev.region_read(C.CONFIG_REGION, 0, 0) == b""
    assert dev.region_write(C.CONFIG_REGION, 5000, b"") == 0       # count 0: before any check
    # A write spanning the interrupt line and pin: the pin is dropped.
    assert dev.region_write(C.CONFIG_REGION, C.INTERRUPT_LINE, b"\x09\x04\x00") == 3
    assert dev.region_read(C.CONFIG_REGION, C.INTERRUPT_LINE, 2) == b"\x09\x01"


def test_pm_power_state_and_virtual_pme_bits():
    dev = probe()
    pm = dict((cid, off) for off, cid in caps_walk(dev))[C.CAP_ID_PM]
    assert cfg_read(dev, pm + 2, 2) & 0xF800 == 0               # PME_Support reads 0
    cfg_write(dev, pm + 4, 2, 0x8103)                            # D3hot, PME_En, PME_Status
    assert cfg_read(dev, pm + 4, 2) & 0x8103 == 0x0003
    assert dev.d3hot()
    cfg_write(dev, pm + 4, 2, 0x0001)                            # D1: unsupported, ignored
    assert cfg_read(dev, pm + 4, 2) & 3 == 3
    cfg_write(dev, pm + 4, 2, 0x0000)
    assert cfg_read(dev, pm + 4, 2) & 3 == 0


def test_pcie_flr_bit_reads_zero_and_resets():
    dev = probe()
    exp = dict((cid, off) for off, cid in caps_walk(dev))[C.CAP_ID_EXP]
    assert cfg_read(dev, exp + 4, 4) & (1 << 28)                 # DEVCAP.FLR
    ctl = cfg_read(dev, exp + 8, 2)
    cfg_write(dev, exp + 8, 2, ctl | 0x8000)
    assert cfg_read(dev, exp + 8, 2) == ctl
    assert dev.counters["resets"] == 1
    cfg_write(dev, exp + 8, 2, ctl | 0x0200)                     # Phantom Functions: read-only
    assert cfg_read(dev, exp + 8, 2) == ctl


def test_msi_control_follows_set_irqs_and_msix_writes_are_dropped():
    dev = probe()
    offs = dict((cid, off) for off, cid in caps_walk(dev))
    msi, msix = offs[C.CAP_ID_MSI], offs[C.CAP_ID_MSIX]
    ctl = cfg_read(dev, msi + 2, 2)
    assert ctl == (2 << 1) | 0x80 | 0x100                        # 4 vectors, 64-bit, per-vector mask
    cfg_write(dev, msi + 2, 2, ctl | 0x1 | (2 << 4))
    assert cfg_read(dev, msi + 2, 2) & 0x1 == 0                  # enable only through SET_IRQS
    cfg_write(dev, msi + 4, 4, 0xFEE00003)
    assert cfg_read(dev, msi + 4, 4) == 0xFEE00000
    before = dev.region_read(C.CONFIG_REGION, msix, 12)
    cfg_write(dev, msix + 2, 2, 0xC000)
    cfg_write(dev, msix + 4, 4, 0x12345678)
    assert dev.region_read(C.CONFIG_REGION, msix, 12) == before
    assert cfg_read(dev, msix + 2, 2) == 7                       # table size 8
    assert cfg_read(dev, msix + 4, 4) == 0x2000 | 0 and cfg_read(dev, msix + 8, 4) == 0x3000


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x17F), st.binary(min_size=1, max_size=8)), max_size=12))
def test_random_writes_never_change_read_only_bits(writes):
    dev = PciDevice(DmaEngine(), RamPort(), FunctionOptions(ats=True, pri=True, pasid_bits=8))
    wmask = bytearray(dev.config.wmask)
    pm = dev.pm.offset + 4
    wmask[pm] |= 0x3                       # PowerState: trapped, written by the function itself
    before = dev.region_read(C.CONFIG_REGION, 0, 0x180)
    for off, data in writes:
        data = data[:0x180 - off]
        dev.region_write(C.CONFIG_REGION, off, data)
    after = dev.region_read(C.CONFIG_REGION, 0, 0x180)
    for i in range(0x180):
        assert (before[i] ^ after[i]) & ~wmask[i] & 0xFF == 0, hex(i)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 4095), st.integers(1, 64))
def test_any_partial_read_equals_the_same_bytes_of_a_whole_read(pos, count):
    dev = PciDevice(DmaEngine(), RamPort(), FunctionOptions(ats=True, pri=True))
    count = min(count, 4096 - pos)
    whole = dev.region_read(C.CONFIG_REGION, 0, 4096)
    assert dev.region_read(C.CONFIG_REGION, pos, count) == whole[pos:pos + count]


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 40), st.sampled_from(["io", "mem32", "mem32p", "mem64", "mem64p"]),
       st.integers(0, 0xFFFFFFFF))
def test_bar_sizing_property(log2, kind, address):
    from core.pci import BarSpec, Model, Identity
    io = kind == "io"
    if io:
        log2 = min(log2, 16)
    spec = BarSpec(1 << log2, io=io, is64=kind.startswith("mem64"), prefetch=kind.endswith("p"))

    class One(Model):
        identity = Identity(vendor=1, device=2)
        bars = (spec,)
    dev = PciDevice(One(), RamPort())
    size = 1 << log2
    mask = ~(size - 1) & (0xFFFFFFFC if io else 0xFFFFFFF0)
    cfg_write(dev, C.BAR_FIRST, 4, 0xFFFFFFFF)
    assert cfg_read(dev, C.BAR_FIRST, 4) == mask | spec.type_bits()
    if spec.is64:
        cfg_write(dev, C.BAR_FIRST + 4, 4, 0xFFFFFFFF)
        assert cfg_read(dev, C.BAR_FIRST + 4, 4) == ((~(size - 1)) >> 32) & 0xFFFFFFFF
    cfg_write(dev, C.BAR_FIRST, 4, address)
    assert cfg_read(dev, C.BAR_FIRST, 4) == (address & mask) | spec.type_bits()


def test_extended_capabilities_need_pcie():
    with pytest.raises(ValueError):
        probe(pcie=False, ats=True)


@pytest.mark.parametrize("no_soft_reset,resets", [(True, 0), (False, 1)])
def test_d3hot_to_d0_resets_only_without_no_soft_reset(no_soft_reset, resets):
    dev = probe(pm_no_soft_reset=no_soft_reset)
    pm = dict((cid, off) for off, cid in caps_walk(dev))[C.CAP_ID_PM]
    assert bool(cfg_read(dev, pm + 4, 2) & 0x8) == no_soft_reset
    cfg_write(dev, pm + 4, 2, 3)
    cfg_write(dev, pm + 4, 2, 0)
    assert dev.counters["resets"] == resets and dev.model.resets == resets
