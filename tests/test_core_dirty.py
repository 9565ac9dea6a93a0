"""Dirty tracking, core only (reference §9.3, §12): SET_DIRTY_TRACKING and
GET_DIRTY_BITMAP in the kernel's order of checks, the bitmap OR-ed into the
caller's memory at any alignment, NO_CLEAR, the selftest's DIRTY op and the
mock's paging formats, and dirty bits set by a real device's DMA writes."""
import errno
import struct

import pytest

from core import uapi
from core.errors import UapiError
from core.wire import IODM_REQUEST as REQ
from core.uapi import ffi
from devfs.client import Buffer

from corekit import Kit, addr, dma_request, new
from test_core_selftest import ST

PLAIN = "0000:00:03.0"          # dirty_tracking = true
PAGE = 4096
MOCK_PAGE = uapi.MOCK_PAGE_SIZE
START = uapi.MOCK_APERTURE_START
DT = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
NO_CLEAR = uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR


@pytest.fixture
def st():
    k = ST()
    yield k
    k.close()


def set_tracking(kit, hwpt, enable=True):
    c = new("iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt,
            flags=uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0)
    kit.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, c)


def get_bitmap(kit, hwpt, iova, length, page_size, data, flags=0):
    c = new("iommu_hwpt_get_dirty_bitmap", hwpt_id=hwpt, iova=iova, length=length,
            page_size=page_size, data=data, flags=flags)
    kit.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, c)
    return c


def bits_of(buf, off, nbits):
    v = int.from_bytes(bytes(buf[off:off + (nbits + 7) // 8]), "little")
    return [k for k in range(nbits) if v >> k & 1]


def mock_dirty(st, hwpt, iova, length, page_size, set_bits):
    bm = bytearray((length // page_size + 7) // 8)
    for k in set_bits:
        bm[k // 8] |= 1 << k % 8
    b = ffi.from_buffer(bm)
    c = st.test(uapi.IOMMU_TEST_OP_DIRTY, hwpt, dirty={"iova": iova, "length": length,
                                                       "page_size": page_size, "uptr": addr(b)})
    return c.dirty.out_nr_dirty


def test_set_dirty_tracking_rules_in_order():
    kit = Kit()
    ioas = kit.ioas()
    vf, dev = kit.bind(PLAIN)
    plain = kit.hwpt(dev, ioas)
    dirty = kit.hwpt(dev, ioas, DT)
    c = new("iommu_hwpt_set_dirty_tracking", hwpt_id=999, flags=2)
    assert kit.err(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, c) == errno.EOPNOTSUPP
    for oid in (999, ioas, dev):
        c = new("iommu_hwpt_set_dirty_tracking", hwpt_id=oid, flags=1)
        assert kit.err(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, c) == errno.ENOENT
    c = new("iommu_hwpt_set_dirty_tracking", hwpt_id=plain, flags=1)
    assert kit.err(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, c) == errno.EOPNOTSUPP
    set_tracking(kit, dirty, True)
    set_tracking(kit, dirty, True)                       # again: fine
    assert kit.ctx.get(dirty).dirty_tracking is True
    c = new("iommu_hwpt_set_dirty_tracking", hwpt_id=dirty, flags=0, __reserved=0xFFFF)
    kit.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, c)     # __reserved is not checked
    assert kit.ctx.get(dirty).dirty_tracking is False
    kit.close()


def test_get_dirty_bitmap_rules_in_order():
    kit = Kit()
    ioas = kit.ioas()
    vf, dev = kit.bind(PLAIN)
    plain = kit.hwpt(dev, ioas)
    dirty = kit.hwpt(dev, ioas, DT)
    out = Buffer(PAGE)

    def err(**f):
        c = new("iommu_hwpt_get_dirty_bitmap", **{"hwpt_id": dirty, "iova": 0, "length": PAGE,
                                                  "page_size": PAGE, "data": out.va, **f})
        return kit.err(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, c)

    assert err(flags=2, hwpt_id=999) == errno.EOPNOTSUPP
    assert err(__reserved=1, hwpt_id=999) == errno.EOPNOTSUPP
    assert err(hwpt_id=999, length=0, iova=PAGE) == errno.ENOENT
    assert err(hwpt_id=ioas) == errno.ENOENT
    assert err(length=0, iova=PAGE) == errno.EOVERFLOW            # iova + (0 - 1) wraps
    assert err(iova=1 << 63, length=1 << 63 | PAGE) == errno.EOVERFLOW
    assert err(iova=0x800) == errno.EINVAL                        # IOAS alignment 4096
    assert err(length=PAGE + 0x800) == errno.EINVAL
    assert err(page_size=0) == errno.EINVAL
    assert err(page_size=2 * PAGE) == errno.EINVAL                # end not a multiple
    assert err(page_size=2 * PAGE, iova=PAGE) == errno.EINVAL
    assert err(hwpt_id=plain) == errno.EOPNOTSUPP                 # no dirty ops, checked last
    # Tracking off, nothing mapped, an unwritable bitmap: 0, nothing written.
    out[0:8] = b"\xaa" * 8
    get_bitmap(kit, dirty, 0, PAGE, PAGE, out.va)
    set_tracking(kit, dirty)
    get_bitmap(kit, dirty, 0, PAGE, PAGE, out.va)
    get_bitmap(kit, dirty, 0, PAGE, PAGE, 0)
    assert bytes(out[0:8]) == b"\xaa" * 8
    out.close()
    kit.close()


def test_device_dma_writes_show_in_the_bitmap_exactly():
    kit = Kit()
    ioas = kit.ioas()
    vf, dev = kit.bind(PLAIN)
    hwpt = kit.hwpt(dev, ioas, DT)
    assert kit.attach(vf, hwpt) == hwpt
    ram = Buffer(64 * PAGE)
    base = 0x100000
    kit.map(ioas, ram.va, len(ram), iova=base)
    dev_obj = kit.emu.devices[PLAIN]

    def dma(op, iova, data=b"", n=0):
        rep = dma_request(kit.emu, dev_obj, kit.caller,
                          REQ.pack(b"IODM", op, 0, 0, iova, n or len(data), 0) + data)
        assert struct.unpack_from("<i", rep, 4)[0] == 0

    dma(2, base + 3 * PAGE, b"x")                 # before tracking: forgotten
    set_tracking(kit, hwpt)
    dma(2, base + 5 * PAGE + 100, b"y" * 10)
    dma(2, base + 9 * PAGE - 1, b"zz")            # spans pages 8 and 9
    dma(1, base + 20 * PAGE, n=64)                # a read dirties nothing
    bm = Buffer(PAGE)
    get_bitmap(kit, hwpt, base, 64 * PAGE, PAGE, bm.va + 3, flags=NO_CLEAR)
    assert bits_of(bm, 3, 64) == [5, 8, 9]
    assert bm[0:3] == b"\0\0\0"
    # OR-ed, not overwritten; then cleared by a read without NO_CLEAR.
    bm[3:3 + 8] = (1 << 40).to_bytes(8, "little")
    get_bitmap(kit, hwpt, base, 64 * PAGE, PAGE, bm.va + 3)
    assert bits_of(bm, 3, 64) == [5, 8, 9, 40]
    bm[3:3 + 8] = bytes(8)
    get_bitmap(kit, hwpt, base, 64 * PAGE, PAGE, bm.va + 3)
    assert bits_of(bm, 3, 64) == []
    # Another page size: bit k covers [base + k * ps, +ps).
    dma(2, base + 17 * PAGE, b"q")
    get_bitmap(kit, hwpt, base, 64 * PAGE, 4 * PAGE, bm.va)
    assert bits_of(bm, 0, 16) == [4]
    # Re-enabling clears whatever was dirtied before.
    dma(2, base + 30 * PAGE, b"r")
    set_tracking(kit, hwpt)
    bm[0:16] = bytes(16)
    get_bitmap(kit, hwpt, base, 64 * PAGE, PAGE, bm.va)
    assert bits_of(bm, 0, 64) == []
    # Only the run of areas contiguous from iova is read.
    ram2 = Buffer(4 * PAGE)
    kit.map(ioas, ram2.va, len(ram2), iova=base + 80 * PAGE)
    dma(2, base + 81 * PAGE, b"s")
    dma(2, base + 2 * PAGE, b"t")
    get_bitmap(kit, hwpt, base + 64 * PAGE, 32 * PAGE, PAGE, bm.va)   # starts in a hole
    assert bits_of(bm, 0, 32) == []
    get_bitmap(kit, hwpt, base, 96 * PAGE, PAGE, bm.va)               # stops at the hole
    assert bits_of(bm, 0, 96) == [2]
    bm[0:16] = bytes(16)
    get_bitmap(kit, hwpt, base + 80 * PAGE, 4 * PAGE, PAGE, bm.va)
    assert bits_of(bm, 0, 4) == [1]
    bm.close()
    ram.close()
    ram2.close()
    kit.close()


def test_hwpt_alloc_with_selftest_data(st):
    ioas = st.ioas()
    _, _, idev = st.mock_domain(ioas)
    data = ffi.new("struct iommu_hwpt_selftest *")

    def alloc(data_type=uapi.IOMMU_HWPT_DATA_SELFTEST, data_len=8, uptr=None, flags=DT):
        c = new("iommu_hwpt_alloc", dev_id=idev, pt_id=ioas, flags=flags, data_type=data_type,
                data_len=data_len, data_uptr=addr(data) if uptr is None else uptr)
        st.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
        return c.out_hwpt_id

    def err(**kw):
        try:
            alloc(**kw)
        except UapiError as e:
            return e.errno
        raise AssertionError("allocated")

    assert err(data_type=uapi.IOMMU_HWPT_DATA_SELFTEST + 1) == errno.EOPNOTSUPP
    assert err(data_len=3) == errno.EINVAL
    assert err(uptr=0) == errno.EFAULT
    big = ffi.new("uint8_t[16]")
    big[12] = 1
    assert err(uptr=addr(big), data_len=16) == errno.E2BIG
    data.pagetable_type = 7
    assert err() == errno.EOPNOTSUPP
    data.pagetable_type = uapi.MOCK_IOMMUPT_DEFAULT
    h = alloc(data_len=4)                          # iotlb only: pagetable_type 0
    assert st.iova_ranges(ioas) == ([(START, uapi.MOCK_APERTURE_LAST)], MOCK_PAGE)
    data.pagetable_type = uapi.MOCK_IOMMUPT_HUGE
    huge = alloc()
    # HUGE offers PAGE_SIZE to be accepted: the IOAS's alignment becomes 4096.
    assert st.iova_ranges(ioas)[1] == PAGE
    st.destroy(huge)
    st.destroy(h)
    # A topology IOMMU takes no driver data.
    vf, dev = st.bind(PLAIN)
    c = new("iommu_hwpt_alloc", dev_id=dev, pt_id=ioas, data_type=uapi.IOMMU_HWPT_DATA_SELFTEST,
            data_len=8, data_uptr=addr(data))
    assert st.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP


def test_selftest_dirty_op_and_mock_iopte_sizes(st):
    ioas = st.ioas()
    opt = new("iommu_option", option_id=1, op=0, object_id=ioas, val64=0)   # HUGE_PAGES off
    st.ioctl(uapi.IOMMU_OPTION, opt)
    stdev, auto, idev = st.mock_domain(ioas)
    buf = Buffer(32 * PAGE)
    st.map(ioas, buf.va, len(buf), iova=START)
    data = ffi.new("struct iommu_hwpt_selftest *")
    c = new("iommu_hwpt_alloc", dev_id=idev, pt_id=ioas, flags=DT,
            data_type=uapi.IOMMU_HWPT_DATA_SELFTEST, data_len=8, data_uptr=addr(data))
    st.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
    hwpt = c.out_hwpt_id
    n = len(buf) // MOCK_PAGE

    def op_err(oid, **d):
        return st.test_err(uapi.IOMMU_TEST_OP_DIRTY, oid, dirty=d)

    good = {"iova": START, "length": len(buf), "page_size": MOCK_PAGE, "uptr": buf.va}
    assert op_err(999, **{**good, "page_size": 0}) == errno.EINVAL
    assert op_err(999, **{**good, "length": 0}) == errno.EINVAL
    assert op_err(999, **{**good, "iova": START + 1}) == errno.EINVAL
    assert op_err(999, **{**good, "length": MOCK_PAGE + 1}) == errno.EINVAL
    assert op_err(999, **{**good, "uptr": 0}) == errno.EINVAL
    assert op_err(999, **good) == errno.ENOENT
    assert op_err(ioas, **good) == errno.ENOENT
    assert op_err(hwpt, **good) == errno.EINVAL                    # not tracking yet
    set_tracking(st, hwpt)
    assert op_err(hwpt, **{**good, "uptr": 8}) == errno.EFAULT
    # Each mark dirties the 4 KiB IOPTE (a host page mapped by one area).
    assert mock_dirty(st, hwpt, START, len(buf), MOCK_PAGE, range(0, n, 4)) == n // 4
    bm = Buffer(2 * PAGE)
    get_bitmap(st, hwpt, START, len(buf), MOCK_PAGE, bm.va + 0xFF1, flags=NO_CLEAR)
    assert bits_of(bm, 0xFF1, n) == sorted(k + j for k in range(0, n, 4) for j in (0, 1))
    bm[0xFF1:0xFF1 + n // 8] = bytes(n // 8)
    get_bitmap(st, hwpt, START, len(buf), MOCK_PAGE, bm.va + 0xFF1)
    assert len(bits_of(bm, 0xFF1, n)) == n // 2
    bm[0xFF1:0xFF1 + n // 8] = bytes(n // 8)
    get_bitmap(st, hwpt, START, len(buf), MOCK_PAGE, bm.va + 0xFF1)
    assert bits_of(bm, 0xFF1, n) == []
    # Marks past the mapping count but dirty nothing.
    assert mock_dirty(st, hwpt, START + len(buf), 4 * MOCK_PAGE, MOCK_PAGE, [0, 3]) == 2
    get_bitmap(st, hwpt, START, len(buf), MOCK_PAGE, bm.va)
    assert bits_of(bm, 0, n) == []
    # The op is for mock domains only.
    vf, dev = st.bind(PLAIN)
    topo = st.hwpt(dev, ioas, DT)
    set_tracking(st, topo)
    assert op_err(topo, **good) == errno.EINVAL
    bm.close()
    buf.close()
