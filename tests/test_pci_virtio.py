"""The modern virtio-pci transport (virtio-pci.md §2-§8), driven as Linux does."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from core.errors import UapiError
from core.pci import PciDevice
from core.pci import consts as C
from core.pci.models.virtio_rng import VirtioRng
from core.pci.models.virtio_blk import VirtioBlk
from test_pci_fakes import RamPort, Sink, VirtioDriver, caps_walk, cfg_read, cfg_write, enable, fds

VERSION_1, ACCESS_PLATFORM = 1 << 32, 1 << 33
ALL = (1 << 64) - 1


def rng(port=None):
    port = port or RamPort()
    dev = PciDevice(VirtioRng(), port)
    return dev, port, VirtioDriver(dev, port)


def test_identity_and_capabilities():
    dev, _, drv = rng()
    assert cfg_read(dev, C.VENDOR_ID, 2) == 0x1AF4 and cfg_read(dev, C.DEVICE_ID, 2) == 0x1044
    assert cfg_read(dev, C.REVISION_ID, 1) == 1
    assert cfg_read(dev, C.SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4 and cfg_read(dev, C.SUBSYSTEM_ID, 2) >= 0x40
    assert cfg_read(dev, C.STATUS, 2) & C.STATUS_CAP_LIST
    ids = [cid for _, cid in caps_walk(dev)]
    assert C.CAP_ID_MSIX in ids and C.CAP_ID_MSI not in ids
    caps = drv.find_caps()
    assert sorted(caps) == [1, 2, 3, 5]                 # no DEVICE_CFG for rng (§2.2)
    assert caps[1][1:4] == (0, 0x0000, 0x40)
    assert caps[2][1:5] == (0, 0x3000, 0x1000, 4)
    assert caps[3][1:4] == (0, 0x1000, 0x1000)
    for cfg_type, (off, *_rest) in caps.items():
        assert off % 4 == 0
        assert cfg_read(dev, off + 2, 1) == (20 if cfg_type in (2, 5) else 16)
    blk_caps = VirtioDriver(PciDevice(VirtioBlk("/dev/null"), RamPort()), None).find_caps()
    assert blk_caps[4][1:4] == (0, 0x2000, 0x60)
    cfg_write(dev, C.BAR_FIRST, 4, 0xFFFFFFFF)
    assert cfg_read(dev, C.BAR_FIRST, 4) == 0xFFFFC000    # 16 KiB, 32-bit, non-prefetchable
    assert dev.irq_info(C.MSIX)[1] == 2                    # queues + 1 (§8.1)


def test_linux_probe_sequence_negotiates_version_1_and_access_platform():
    dev, _, drv = rng()
    assert drv.probe(ALL) == VERSION_1 | ACCESS_PLATFORM
    assert drv.status() == 0x0F
    drv.wr(1, 0x00, 4, 0)
    assert drv.rd(1, 0x04, 4) == 0
    drv.wr(1, 0x00, 4, 1)
    assert drv.rd(1, 0x04, 4) == 3
    drv.wr(1, 0x00, 4, 2)
    assert drv.rd(1, 0x04, 4) == 0
    assert drv.rd(1, 0x12, 2) == 1                        # num_queues


@pytest.mark.parametrize("features", [ACCESS_PLATFORM, VERSION_1 | (1 << 34)])
def test_features_ok_refused_without_version_1_or_with_unoffered_bits(features):
    dev, _, drv = rng()
    enable(dev, C.CMD_MEMORY)
    drv.find_caps()
    drv.set_status(3)
    drv.wr(1, 0x08, 4, 1)
    drv.wr(1, 0x0C, 4, features >> 32)
    drv.set_status(0x0B)
    assert drv.status() == 0x03


def test_status_zero_resets_queues_vectors_features():
    dev, _, drv = rng()
    drv.probe(ALL, msix_sinks={5: Sink(), 6: Sink()}, qsize=16)
    drv.set_status(0)
    assert drv.status() == 0
    drv.wr(1, 0x16, 2, 0)
    assert drv.rd(1, 0x18, 2) == 64 and drv.rd(1, 0x1C, 2) == 0 and drv.rd(1, 0x1A, 2) == 0xFFFF
    assert drv.rd(1, 0x10, 2) == 0xFFFF and drv.rd(1, 0x20, 4) == 0
    drv.wr(1, 0x08, 4, 1)
    assert drv.rd(1, 0x0C, 4) == 0


def test_vector_rules_and_missing_queue():
    dev, _, drv = rng()
    enable(dev, C.CMD_MEMORY)
    drv.find_caps()
    drv.wr(1, 0x10, 2, 2)                                  # >= table size (2): refused
    assert drv.rd(1, 0x10, 2) == 0xFFFF
    drv.wr(1, 0x10, 2, 1)
    assert drv.rd(1, 0x10, 2) == 1
    drv.wr(1, 0x10, 2, 0xFFFF)
    assert drv.rd(1, 0x10, 2) == 0xFFFF
    drv.wr(1, 0x16, 2, 1)                                  # no queue 1
    assert drv.rd(1, 0x18, 2) == 0 and drv.rd(1, 0x1E, 2) == 0
    drv.wr(1, 0x18, 2, 8)
    assert drv.rd(1, 0x18, 2) == 0
    drv.wr(1, 0x16, 2, 0)
    drv.wr(1, 0x20, 4, 0x89ABCDEF)
    drv.wr(1, 0x24, 4, 0x01234567)
    assert dev.region_read(0, 0x20, 8) == struct.pack("<Q", 0x0123456789ABCDEF)
    drv.wr(1, 0x20, 2, 0x1111)                             # partial writes merge
    assert drv.rd(1, 0x20, 4) == 0x89AB1111


def test_msix_interrupt_per_queue_vector_and_suppression():
    dev, port, drv = rng()
    cfgv, qv = Sink(), Sink()
    drv.probe(ALL, msix_sinks={5: cfgv, 6: qv}, qsize=8)
    addr, n = drv.buf(size=32)
    head = drv.add_chain([(addr, n, True)])
    drv.kick()
    assert drv.used() == [(head, 32)]
    assert qv.take() == 1 and cfgv.take() == 0
    assert port.get(addr, 32) != bytes(32)
    port.put(drv.RING + 0x1000, struct.pack("<H", 1))      # avail.flags NO_INTERRUPT
    drv.add_chain([drv.buf(size=8) + (True,)])
    drv.kick()
    assert len(drv.used()) == 1 and qv.take() == 0


def test_intx_and_isr_when_msix_is_off():
    dev, port, drv = rng()
    t = Sink()
    drv.probe(ALL, qsize=8)
    dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.INTX, 0, 1, fds(9), {9: t})
    drv.add_chain([drv.buf(size=16) + (True,)])
    drv.kick()
    assert t.take() == 1
    assert cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    assert drv.rd(3, 0, 1) == 1                            # ISR: queue bit, read clears
    assert drv.rd(3, 0, 1) == 0
    assert not cfg_read(dev, C.STATUS, 2) & C.STATUS_INTERRUPT
    dev.set_irqs(C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1)
    assert t.take() == 0                                   # line deasserted: no re-signal


def test_no_processing_before_driver_ok_then_scan_at_driver_ok():
    dev, port, drv = rng()
    enable(dev, C.CMD_MEMORY | C.CMD_MASTER)
    drv.find_caps()
    drv.qsize = 8
    drv.set_status(0x03)
    drv.wr(1, 0x08, 4, 1)
    drv.wr(1, 0x0C, 4, 1)
    drv.set_status(0x0B)
    drv.wr(1, 0x18, 2, 8)
    for off, addr in ((0x20, drv.RING), (0x28, drv.RING + 0x1000), (0x30, drv.RING + 0x2000)):
        drv.wr(1, off, 4, addr)
    drv.notify_off = 0
    drv.wr(1, 0x1C, 2, 1)
    drv.add_chain([drv.buf(size=4) + (True,)])
    drv.kick()
    assert drv.used() == []
    drv.set_status(0x0F)
    assert drv.used() == [(0, 4)]


def test_ring_corruption_sets_needs_reset_and_config_interrupt():
    dev, port, drv = rng()
    cfgv, qv = Sink(), Sink()
    drv.probe(ALL, msix_sinks={5: cfgv, 6: qv}, qsize=8)
    port.put(drv.RING + 0x1000 + 4, struct.pack("<H", 9))  # head index >= queue size
    port.put(drv.RING + 0x1000 + 2, struct.pack("<H", 1))
    drv.kick()
    assert drv.status() & 0x40 and cfgv.take() == 1 and qv.take() == 0
    drv.set_status(drv.status() | 0x80)                    # the driver cannot clear it
    assert drv.status() & 0x40
    drv.set_status(0)
    assert drv.status() == 0


def test_dma_fault_on_ring_and_bus_master_clear_need_reset():
    port = RamPort(holes=[(VirtioDriver.RING + 0x2000, VirtioDriver.RING + 0x3000)])
    dev, port, drv = rng(port)
    drv.probe(ALL, qsize=8)
    drv.add_chain([drv.buf(size=4) + (True,)])
    drv.kick()
    assert drv.status() & 0x40
    dev2, port2, drv2 = rng()
    drv2.probe(ALL, qsize=8)
    cfg_write(dev2, C.COMMAND, 2, C.CMD_MEMORY)            # Bus Master off
    drv2.add_chain([drv2.buf(size=4) + (True,)])
    drv2.kick()
    assert drv2.status() & 0x40 and port2.get(drv2.RING + 0x2002, 2) == b"\0\0"


def test_pci_cfg_window_reaches_bar_registers_with_side_effects():
    dev, port, drv = rng()
    drv.probe(ALL, qsize=8)
    t = Sink()
    dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.INTX, 0, 1, fds(9), {9: t})
    win = drv.caps[5][0]

    def window(bar, off, length):
        cfg_write(dev, win + 4, 1, bar)
        cfg_write(dev, win + 8, 4, off)
        cfg_write(dev, win + 12, 4, length)

    window(0, 0x12, 2)                                     # num_queues
    assert cfg_read(dev, win + 16, 2) == 1
    drv.add_chain([drv.buf(size=4) + (True,)])
    window(0, 0x3000, 2)                                   # notify through the window
    cfg_write(dev, win + 16, 2, 0)
    assert len(drv.used()) == 1 and t.take() == 1
    window(0, 0x1000, 1)                                   # ISR read through the window clears it
    assert cfg_read(dev, win + 16, 1) == 1
    assert cfg_read(dev, win + 16, 1) == 0
    assert cfg_read(dev, win + 2, 1) == 20 and cfg_read(dev, win + 3, 1) == 5


def test_event_idx_maintains_avail_event_and_honours_used_event(tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(4096))
    port = RamPort()
    dev = PciDevice(VirtioBlk(str(img)), port)
    drv = VirtioDriver(dev, port)
    q = Sink()
    feats = drv.probe(ALL, msix_sinks={1: Sink(), 2: q}, qsize=8)
    assert feats >> 29 & 1
    used_event = drv.RING + 0x1000 + 4 + 2 * 8
    port.put(used_event, struct.pack("<H", 5))             # interrupt only after used entry 6
    hdr = drv.buf(struct.pack("<IIQ", 4, 0, 0))
    drv.add_chain([hdr + (False,), drv.buf(size=1) + (True,)])
    drv.kick()
    assert q.take() == 0
    avail_event = drv.RING + 0x2000 + 4 + 8 * 8
    assert port.get(avail_event, 2) == struct.pack("<H", 1)
    port.put(used_event, struct.pack("<H", 1))
    drv.add_chain([hdr + (False,), drv.buf(size=1) + (True,)])
    drv.kick()
    assert q.take() == 1 and port.get(avail_event, 2) == struct.pack("<H", 2)


_ops = st.lists(st.tuples(st.sampled_from(["cfg", "bar0", "bar1", "rom"]), st.integers(0, 0x4100),
                          st.binary(min_size=0, max_size=9), st.booleans()), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["virtio-blk", "virtio-rng", "dma-engine"]), _ops)
def test_random_accesses_only_ever_raise_uapi_errors(tmp_path_factory, kind, ops):
    from core.pci.models import make_model
    params = {}
    if kind == "virtio-blk":
        img = tmp_path_factory.mktemp("img") / "d.img"
        img.write_bytes(bytes(8192))
        params = {"disk": str(img)}
    port = RamPort(size=0x8000)
    dev = PciDevice(make_model(kind, **params), port)
    enable(dev, C.CMD_MEMORY | C.CMD_MASTER)
    index = {"cfg": C.CONFIG_REGION, "bar0": 0, "bar1": 1, "rom": C.ROM_REGION}
    for region, off, data, is_write in ops:
        try:
            if is_write:
                dev.region_write(index[region], off, data)
            else:
                dev.region_read(index[region], off, len(data))
        except UapiError:
            pass
    dev.state()
    dev.reset()
    dev.release()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["virtio-blk", "virtio-rng"]), st.binary(min_size=16 * 8, max_size=16 * 8),
       st.binary(min_size=16, max_size=16), st.integers(0, 9), st.booleans())
def test_garbage_rings_end_in_completion_or_needs_reset(tmp_path_factory, kind, descs, ring, idx, indirect):
    from core.pci.models import make_model
    params = {}
    if kind == "virtio-blk":
        img = tmp_path_factory.mktemp("img") / "d.img"
        img.write_bytes(bytes(8192))
        params = {"disk": str(img)}
    port = RamPort(size=0x30000)
    dev = PciDevice(make_model(kind, **params), port)
    drv = VirtioDriver(dev, port)
    drv.probe(ALL if indirect else ALL & ~(1 << 28), msix_sinks={1: Sink(), 2: Sink()}, qsize=8)
    port.put(drv.RING, descs)
    port.put(drv.RING + 0x1000, struct.pack("<HH", 0, idx) + ring)
    drv.kick()
    used_idx = struct.unpack("<H", port.get(drv.RING + 0x2002, 2))[0]
    assert drv.status() & 0x40 or used_idx == idx
    dev.reset()
    assert drv.status() == 0


_reg = st.one_of(st.integers(0, 0x3F), st.just(0x1000), st.integers(0x2000, 0x2060), st.integers(0x3000, 0x3008))
_driver_ops = st.lists(st.tuples(_reg, st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1), st.booleans(),
                                 st.binary(max_size=32)), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["virtio-blk", "virtio-rng"]), _driver_ops)
def test_a_confused_driver_never_breaks_the_device(tmp_path_factory, kind, ops):
    """Random register traffic and ring bytes after a correct probe: only
    UapiError may escape, and a reset always brings status back to 0."""
    from core.pci.models import make_model
    params = {}
    if kind == "virtio-blk":
        img = tmp_path_factory.mktemp("img") / "d.img"
        img.write_bytes(bytes(8192))
        params = {"disk": str(img)}
    port = RamPort(size=0x30000)
    dev = PciDevice(make_model(kind, **params), port)
    drv = VirtioDriver(dev, port)
    drv.probe(ALL, msix_sinks={1: Sink(), 2: Sink()}, qsize=8)
    for off, size, value, is_write, ring_bytes in ops:
        if ring_bytes:
            port.put(drv.RING + (value % 0x3000), ring_bytes)
        try:
            if is_write:
                dev.region_write(0, off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
            else:
                dev.region_read(0, off, size)
        except UapiError:
            pass
    dev.state()
    drv.set_status(0)
    assert drv.status() == 0
