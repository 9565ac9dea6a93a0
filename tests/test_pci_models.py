"""The device models: virtio-blk (virtio-pci.md §9), virtio-rng (§10) and
dma-engine (core/pci/models/dma_engine.py's register map)."""
import errno
import os
import struct

import pytest

from core.pci import FunctionOptions, PciDevice
from core.pci import consts as C
from core.pci.models import dma_engine as D
from core.pci.models.dma_engine import DmaEngine
from core.pci.models.virtio_blk import VirtioBlk
from core.pci.models.virtio_rng import VirtioRng
from test_pci_fakes import RamPort, Sink, VirtioDriver, enable, fds

ALL = (1 << 64) - 1
NO_INDIRECT = ALL & ~(1 << 28)
IN, OUT, FLUSH, GET_ID = 0, 1, 4, 8


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 64)          # 16 KiB = 32 sectors
    return path


def blk(path, readonly=False, want=NO_INDIRECT, holes=()):
    port = RamPort(holes=holes)
    dev = PciDevice(VirtioBlk(str(path), readonly=readonly, serial="iommufs-serial-0001"), port)
    drv = VirtioDriver(dev, port)
    q = Sink()
    feats = drv.probe(want, msix_sinks={1: Sink(), 2: q}, qsize=64)
    return dev, port, drv, q, feats


def request(drv, rtype, sector, data=None, read_len=0, indirect=False):
    """Linux's layout (§9.5): header, data segments, status. Returns (head, data addr, status addr)."""
    hdr = drv.buf(struct.pack("<IIQ", rtype, 0, sector))
    segs = [hdr + (False,)]
    data_addr = None
    if data is not None:
        d = drv.buf(data)
        data_addr = d[0]
        segs.append(d + (False,))
    if read_len:
        d = drv.buf(size=read_len)
        data_addr = d[0]
        segs.append(d + (True,))
    status = drv.buf(b"\xee")
    segs.append(status + (True,))
    head = drv.add_chain(segs, indirect=indirect)
    drv.kick()
    return head, data_addr, status[0]


def test_blk_config_and_features(image):
    dev, port, drv, q, feats = blk(image)
    assert feats & 0xFFFFFFFF == (1 << 2) | (1 << 6) | (1 << 9) | (1 << 29)
    assert feats >> 32 == 3
    assert struct.unpack("<Q", dev.region_read(0, 0x2000, 8))[0] == 32      # capacity, 512-byte sectors
    assert drv.rd(4, 0x08, 4) == 0                                          # size_max: not offered
    assert drv.rd(4, 0x0C, 4) == 254                                        # seg_max = queue size - 2
    assert drv.rd(4, 0x14, 4) == 512                                        # blk_size
    assert dev.region_read(0, 0x2000 + 0x5C, 4) == bytes(4)


def test_blk_in_out_flush_get_id(image):
    dev, port, drv, q, _ = blk(image)
    head, data, status = request(drv, IN, 2, read_len=1024)
    assert drv.used() == [(head, 1025)] and port.get(status, 1) == b"\0"
    assert port.get(data, 1024) == (bytes(range(256)) * 4)
    assert q.take() == 1
    payload = os.urandom(1024)
    head, _, status = request(drv, OUT, 4, data=payload)
    assert drv.used() == [(head, 1)] and port.get(status, 1) == b"\0"
    head, _, status = request(drv, FLUSH, 0)
    assert drv.used() == [(head, 1)] and port.get(status, 1) == b"\0"
    assert image.read_bytes()[4 * 512:6 * 512] == payload
    head, data, status = request(drv, GET_ID, 0, read_len=20)
    assert drv.used() == [(head, 21)] and port.get(data, 20) == b"iommufs-serial-0001\0"
    head, data, status = request(drv, IN, 4, read_len=1024)
    assert port.get(data, 1024) == payload
    st = dev.state()["model_state"]["requests"]
    assert (st["in"], st["out"], st["flush"], st["get_id"]) == (2, 1, 1, 1)


def test_blk_indirect_request(image):
    dev, port, drv, q, feats = blk(image, want=ALL)
    assert feats >> 28 & 1
    head, data, status = request(drv, IN, 0, read_len=512, indirect=True)
    assert drv.used() == [(head, 513)] and port.get(data, 512) == bytes(range(256)) * 2
    assert port.get(status, 1) == b"\0"


@pytest.mark.parametrize("rtype,sector,kw,expect", [
    (IN, 31, {"read_len": 1024}, 1),        # past the capacity
    (IN, 0, {"read_len": 100}, 1),          # not a multiple of 512
    (OUT, 32, {"data": bytes(512)}, 1),
    (2, 0, {}, 2),                          # legacy SCSI: UNSUPP
    (11, 0, {"data": bytes(16)}, 2),        # DISCARD not offered: UNSUPP
])
def test_blk_errors_are_request_status_not_needs_reset(image, rtype, sector, kw, expect):
    dev, port, drv, q, _ = blk(image)
    head, _, status = request(drv, rtype, sector, **kw)
    assert drv.used() == [(head, 1)] and port.get(status, 1) == bytes([expect])
    assert not drv.status() & 0x40


def test_blk_readonly_offers_ro_and_fails_out(image):
    before = image.read_bytes()
    dev, port, drv, q, feats = blk(image, readonly=True)
    assert feats >> 5 & 1
    head, _, status = request(drv, OUT, 0, data=b"x" * 512)
    assert port.get(status, 1) == b"\x01" and image.read_bytes() == before
    head, data, status = request(drv, IN, 0, read_len=512)
    assert port.get(status, 1) == b"\0"


def test_blk_dma_fault_on_data_buffer_is_ioerr(image):
    dev, port, drv, q, _ = blk(image)
    port.holes.append((VirtioDriver.BUF + 16, VirtioDriver.BUF + 16 + 512))   # the data buffer
    head, _, status = request(drv, IN, 0, read_len=512)
    assert port.get(status, 1) == b"\x01" and not drv.status() & 0x40


def test_blk_release_closes_the_image(image):
    dev, *_ = blk(image)
    fd = dev.model.fd
    dev.release()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_rng_fills_a_buffer():
    port = RamPort()
    dev = PciDevice(VirtioRng(), port)
    drv = VirtioDriver(dev, port)
    q = Sink()
    drv.probe(ALL, msix_sinks={1: Sink(), 2: q}, qsize=8)
    a1, n1 = drv.buf(size=64)
    a2, n2 = drv.buf(size=64)
    head = drv.add_chain([(a1, 48, True), (a2, 16, True)])
    drv.kick()
    assert drv.used() == [(head, 64)] and q.take() == 1
    assert port.get(a1, 48) != bytes(48) and port.get(a2, 16) != bytes(16)
    assert dev.state()["model_state"]["bytes_served"] == 64


def test_rng_readable_buffer_is_a_driver_error():
    port = RamPort()
    dev = PciDevice(VirtioRng(), port)
    drv = VirtioDriver(dev, port)
    drv.probe(ALL, qsize=8)
    drv.add_chain([drv.buf(b"abcd") + (False,)])
    drv.kick()
    assert drv.used() == [] and drv.status() & 0x40


# -- dma-engine -----------------------------------------------------------------


def engine(pasid_bits=0, holes=()):
    port = RamPort(size=0x20000, holes=holes)
    dev = PciDevice(DmaEngine(), port, FunctionOptions(pasid_bits=pasid_bits))
    enable(dev, C.CMD_MEMORY | C.CMD_MASTER)
    return dev, port


def regw(dev, off, value):
    dev.region_write(0, off, value.to_bytes(4, "little"))


def regr(dev, off):
    return int.from_bytes(dev.region_read(0, off, 4), "little")


def descriptor(dev, op, dst, length, src=0, pattern=0, control=0, pasid=0):
    dev.region_write(0, D.SRC_LO, struct.pack("<QQ", src, dst))          # 8-byte writes
    for off, v in ((D.LENGTH, length), (D.OP, op), (D.PATTERN, pattern), (D.PASID, pasid),
                   (D.CONTROL, control)):
        regw(dev, off, v)
    regw(dev, D.DOORBELL, 1)


def test_engine_identity_registers():
    dev, _ = engine()
    assert regr(dev, D.ID) == 0x414D4449 and regr(dev, D.MAX_LENGTH) == 1 << 20
    assert dev.region_read(0, D.ID, 2) == b"ID"


def test_engine_copy_and_fill():
    dev, port = engine()
    port.put(0x1000, bytes(range(200)))
    descriptor(dev, D.OP_COPY, 0x8000, 200, src=0x1000)
    assert regr(dev, D.STATUS) == D.STATUS_DONE and port.get(0x8000, 200) == bytes(range(200))
    descriptor(dev, D.OP_FILL, 0x9001, 10, pattern=0x44332211)
    assert port.get(0x9000, 12) == b"\0" + bytes([0x11, 0x22, 0x33, 0x44]) * 2 + b"\x11\x22\0"
    assert regr(dev, D.COMPLETED) == 2 and regr(dev, D.ERROR) == 0
    descriptor(dev, D.OP_COPY, 0x10000, 10000, src=0x1000)               # several chunks
    assert port.get(0x10000, 200) == bytes(range(200))


def test_engine_fault_records_iova_and_errno():
    dev, port = engine(holes=[(0xA100, 0xA200)])
    descriptor(dev, D.OP_FILL, 0x9000, 0x2000, pattern=1)
    assert regr(dev, D.STATUS) == D.STATUS_ERROR
    assert regr(dev, D.ERROR) == errno.EFAULT
    # The port reports the first unmapped IOVA of the failing 4 KiB write.
    assert regr(dev, D.FAULT_LO) | regr(dev, D.FAULT_HI) << 32 == 0xA100
    assert dev.state()["model_state"]["faults"] == 1
    regw(dev, D.STATUS, D.STATUS_ERROR)                                  # RW1C
    assert regr(dev, D.STATUS) == 0
    descriptor(dev, 7, 0x9000, 4)
    assert regr(dev, D.ERROR) == errno.EINVAL


def test_engine_pasid_only_with_a_pasid_capable_function():
    dev, port = engine()
    descriptor(dev, D.OP_FILL, 0x100, 4, control=D.CTL_PASID_VALID, pasid=5)
    assert regr(dev, D.ERROR) == errno.EINVAL and port.log == []
    dev, port = engine(pasid_bits=8)
    descriptor(dev, D.OP_FILL, 0x100, 4, control=D.CTL_PASID_VALID, pasid=5)
    assert regr(dev, D.STATUS) == D.STATUS_DONE and port.log[-1] == ("w", 0x100, 4, 5)
    descriptor(dev, D.OP_FILL, 0x100, 4, control=D.CTL_PASID_VALID, pasid=256)
    assert regr(dev, D.ERROR) == errno.EINVAL


def test_engine_completion_interrupt_msix_and_intx():
    dev, port = engine()
    v0 = Sink()
    dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.MSIX, 0, 2, fds(1, -1), {1: v0})
    descriptor(dev, D.OP_FILL, 0x100, 4, control=D.CTL_IRQ)
    assert v0.take() == 1 and regr(dev, D.IRQ_STATUS) == 1
    dev.set_irqs(C.DATA_NONE | C.ACTION_TRIGGER, C.MSIX, 0, 0)
    t = Sink()
    dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.INTX, 0, 1, fds(2), {2: t})
    assert t.take() == 0                     # IRQ_STATUS is set but the line was never asserted
    descriptor(dev, D.OP_FILL, 0x100, 4, control=D.CTL_IRQ)
    assert t.take() == 1
    regw(dev, D.IRQ_STATUS, 1)
    dev.set_irqs(C.DATA_NONE | C.ACTION_UNMASK, C.INTX, 0, 1)
    assert t.take() == 0
    descriptor(dev, D.OP_FILL, 0x100, 4)     # no interrupt requested
    assert t.take() == 0


def test_engine_rom_image():
    dev, _ = engine()
    rom = dev.region_read(C.ROM_REGION, 0, 0x800)
    assert rom[:2] == b"\x55\xaa" and b"iommufs dma-engine" in rom and rom[512:] == b"\xff" * 1536


def test_flush_reaches_the_disk_with_fsync(image, monkeypatch):
    import core.pci.models.virtio_blk as vb
    synced = []
    monkeypatch.setattr(vb.os, "fsync", lambda fd: synced.append(fd))
    dev, port, drv, q, _ = blk(image)
    request(drv, OUT, 0, data=b"a" * 512)
    assert synced == []                                   # FLUSH negotiated: writeback
    request(drv, FLUSH, 0)
    assert synced == [dev.model.fd]
    # Without FLUSH negotiated every OUT is durable before it completes (§9.6).
    dev2, port2, drv2, q2, feats = blk(image, want=NO_INDIRECT & ~(1 << 9))
    request(drv2, OUT, 0, data=b"b" * 512)
    assert synced[-1] == dev2.model.fd and len(synced) == 2


def test_make_model_and_state_is_json(image):
    import json
    from core.pci.models import make_model
    for kind, params in (("virtio-blk", {"disk": str(image)}), ("virtio-rng", {}), ("dma-engine", {})):
        dev = PciDevice(make_model(kind, **params), RamPort())
        st = json.loads(json.dumps(dev.state()))
        assert st["model"] == kind
        dev.release()
    with pytest.raises(KeyError):
        make_model("virtio-net")


def test_rng_fills_at_most_64k_per_chain():
    port = RamPort(size=0x80000)
    dev = PciDevice(VirtioRng(), port)
    drv = VirtioDriver(dev, port)
    drv.probe(ALL, qsize=8)
    addr, n = drv.buf(size=0x20000)
    head = drv.add_chain([(addr, n, True)])
    drv.kick()
    assert drv.used() == [(head, 0x10000)]


def test_blk_large_request_is_moved_in_chunks(tmp_path):
    img = tmp_path / "big.img"
    payload = os.urandom(3 << 20)
    img.write_bytes(payload)
    port = RamPort(size=0x400000 + 0x30000)
    dev = PciDevice(VirtioBlk(str(img)), port)
    drv = VirtioDriver(dev, port)
    drv.probe(NO_INDIRECT, qsize=8)
    head, data, status = request(drv, IN, 0, read_len=len(payload) - 4096)
    assert port.get(status, 1) == b"\0" and port.get(data, len(payload) - 4096) == payload[:-4096]
    assert max(n for op, _, n, _ in port.log if op == "w") == 1 << 20


def test_rng_dma_fault_on_the_buffer_needs_reset():
    port = RamPort()
    dev = PciDevice(VirtioRng(), port)
    drv = VirtioDriver(dev, port)
    drv.probe(ALL, qsize=8)
    drv.add_chain([(0x7FFFFF00, 64, True)])          # outside the fake RAM
    drv.kick()
    assert drv.used() == [] and drv.status() & 0x40
    assert "0x7fffff00" in dev.state()["model_state"]["needs_reset"]
