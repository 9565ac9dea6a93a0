"""Unit tests of VFIO type1 compatibility on /dev/iommu and IOMMU_VFIO_IOAS,
driving core directly (no mount).

Reference: §2 (routing: nr < 0x80 or past 0xa0 goes to the compat handler),
§11.4 (the compat ioctls, each rule and errno in the kernel's order), §7
(IOMMU_VFIO_IOAS). Structs live in this process's memory; "nothing written
back" is checked either by sentinel values or by putting the struct in a
read-only page (a write-back would then be EFAULT).
"""
import ctypes
import errno
import mmap
import struct

import pytest

from core import uapi
from core.iommu.dma import REPLY, REQ
from core.errors import UapiError
from core.uapi import ffi
from core.mm.usermem import MemArg
from devfs.client import Buffer

from corekit import Kit, dma_request, new

PLAIN = "0000:00:03.0"
PAGE = 4096
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
MSI = (0xFEE00000, 0xFEEFFFFF)
NO_DOMAIN_PGSIZES = 0xFFFFFFFFFFFFF000     # all of u64, sub-page bits folded into 4 KiB
BUILTIN_PGSIZES = 4096 | (2 << 20) | (1 << 30)
RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
DMA_READ, DMA_WRITE = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


def set_compat(kit, ioas_id):
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_SET, ioas_id=ioas_id))


def compat_with_device(kit, iommu_type=uapi.VFIO_TYPE1v2_IOMMU):
    """A compat IOAS with the plain device attached (auto HWPT) and SET_IOMMU done."""
    ioas = kit.ioas()
    set_compat(kit, ioas)
    vf, _ = kit.bind(PLAIN)
    kit.attach(vf, ioas)
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, iommu_type) == 0
    return kit.ctx.objects[ioas]


def map_dma(kit, vaddr, iova, size, flags=RW):
    kit.ioctl(uapi.VFIO_IOMMU_MAP_DMA, new("vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr,
                                           iova=iova, size=size))


def unmap_dma(kit, iova, size, flags=0):
    """UNMAP_DMA -> (errno or 0, size as left in the struct)."""
    c = new("vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
    try:
        kit.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, c)
    except UapiError as e:
        return e.errno, c.size
    return 0, c.size


def dma(kit, op, iova, data=b"", length=None):
    """One DMA of the plain device -> (status, data read)."""
    n = len(data) if length is None else length
    rep = dma_request(kit.emu, kit.emu.devices[PLAIN], kit.caller, REQ.pack(b"IODM", op, 0, 0, iova, n, 0) + data)
    _magic, status, _moved, _res, _fault = REPLY.unpack_from(rep)
    return status, rep[REPLY.size:]


def option_huge_pages(kit, ioas_id):
    c = new("iommu_option", option_id=uapi.IOMMU_OPTION_HUGE_PAGES, op=uapi.IOMMU_OPTION_OP_GET,
            object_id=ioas_id)
    kit.ioctl(uapi.IOMMU_OPTION, c)
    return c.val64


class ReadOnly:
    """``data`` copied into a page that is then made read-only: process_vm_writev
    to it fails, so any write-back to a struct there is EFAULT."""

    def __init__(self, data):
        self.map = mmap.mmap(-1, PAGE)
        self.map[:len(data)] = data
        self._c = ffi.from_buffer(self.map)
        self.va = int(ffi.cast("uintptr_t", self._c))
        assert _libc.mprotect(self.va, PAGE, mmap.PROT_READ) == 0

    def bytes(self, n):
        return bytes(self.map[:n])


def ro_call(kit, cmd, cdata):
    """The call with ``cdata``'s bytes in a read-only page -> 0 or errno."""
    ro = ReadOnly(ffi.buffer(cdata)[:])
    try:
        kit.iommufd.ioctl(kit.caller, cmd, MemArg(kit.caller.mem, ro.va))
    except UapiError as e:
        return e.errno
    return 0


class FakeDomain:
    """A domain without an IOMMU model: only ``page_size``; optionally not
    cache-coherent. Records nothing (the maps are never translated)."""

    def __init__(self, page_size=PAGE, coherent=True):
        self.page_size = page_size
        if not coherent:
            self.enforce_cache_coherency = False

    def map(self, iova, user_va, length, prot, huge, owner=None):
        pass

    def unmap(self, iova, length):
        return length


# -- routing (§2) ----------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [
    0x3B00, 0x3B63, 0x3B67, uapi.VFIO_DEVICE_GET_INFO, uapi.VFIO_IOMMU_DIRTY_PAGES,
    uapi.VFIO_DEVICE_BIND_IOMMUFD, 0x3B7F, 0x3BA1, 0x3BFF, 0x3C64, 0x40083B64,
])
def test_unknown_compat_numbers_are_enotty_without_reading(kit, cmd):
    ioas = kit.ioas()
    set_compat(kit, ioas)
    # Address 8 is unmapped: had the argument been read, this would be EFAULT.
    assert kit.err(cmd, 8, fn=kit.ioctl_int) == errno.ENOTTY
    assert kit.frame(cmd, b"") == (-errno.ENOTTY, b"")


def test_table_reaches_0xa0_and_compat_starts_past_it(kit):
    # 0x95..0xa0 are slots of the table (built like CONFIG_IOMMUFD_TEST): the
    # size word is read first, so a bad pointer is EFAULT; 0xa1 is compat.
    for nr in (0x95, 0x9F, 0xA0):
        assert kit.err(0x3B00 | nr, 8, fn=kit.ioctl_int) == errno.EFAULT
    assert kit.err(0x3BA1, 8, fn=kit.ioctl_int) == errno.ENOTTY
    assert kit.err(0x3B7F, 8, fn=kit.ioctl_int) == errno.ENOTTY


# -- IOMMU_VFIO_IOAS (§7) -------------------------------------------------------------------
def test_vfio_ioas_rules_in_order(kit):
    ioas = kit.ioas()
    c = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_GET, ioas_id=77)
    c.size = 11
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.EINVAL            # below the minimum (12)
    c.size = 12
    c.__reserved, c.op = 1, 9
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.EOPNOTSUPP        # __reserved before op
    c.__reserved = 0
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.EOPNOTSUPP        # unknown op
    c.op = 3
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.EOPNOTSUPP
    c.op = uapi.IOMMU_VFIO_IOAS_GET
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.ENODEV            # no compat IOAS yet
    assert c.ioas_id == 77                                             # nothing written back
    vf, dev_id = kit.bind(PLAIN)
    hwpt = kit.hwpt(dev_id, ioas)
    for bad in (99, dev_id, hwpt, 0):
        s = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_SET, ioas_id=bad)
        assert kit.err(uapi.IOMMU_VFIO_IOAS, s) == errno.ENOENT
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.ENODEV
    # SET writes nothing back: it succeeds on a read-only struct; GET does not.
    s = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_SET, ioas_id=ioas)
    assert ro_call(kit, uapi.IOMMU_VFIO_IOAS, s) == 0
    assert ro_call(kit, uapi.IOMMU_VFIO_IOAS, c) == errno.EFAULT
    assert ro_call(kit, uapi.IOMMU_VFIO_IOAS, new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_CLEAR)) == 0
    assert kit.err(uapi.IOMMU_VFIO_IOAS, c) == errno.ENODEV            # CLEAR took effect
    set_compat(kit, ioas)
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, c)
    assert c.ioas_id == ioas
    # A frame gets the id back in its reply argument, and only the 12 bytes sent.
    r, out = kit.frame(uapi.IOMMU_VFIO_IOAS, struct.pack("<IIHH", 12, 0, 0, 0))
    assert (r, out) == (0, struct.pack("<IIHH", 12, ioas, 0, 0))


def test_vfio_ioas_set_replaces_clear_always_succeeds(kit):
    a, b = kit.ioas(), kit.ioas()
    clear = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_CLEAR, ioas_id=12345)
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, clear)                             # nothing to clear: fine
    set_compat(kit, a)
    set_compat(kit, b)
    g = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_GET)
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, g)
    assert g.ioas_id == b
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, clear)
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, clear)
    assert kit.err(uapi.IOMMU_VFIO_IOAS, g) == errno.ENODEV
    kit.destroy(a)                                                     # neither SET nor CLEAR holds a reference
    kit.destroy(b)


def test_destroying_the_compat_ioas_clears_it(kit):
    ioas = kit.ioas()
    set_compat(kit, ioas)
    vf, dev_id = kit.bind(PLAIN)
    hwpt = kit.hwpt(dev_id, ioas)
    assert kit.destroy_err(ioas) == errno.EBUSY                        # compat holds no ref; the HWPT does
    g = new("iommu_vfio_ioas", op=uapi.IOMMU_VFIO_IOAS_GET)
    kit.ioctl(uapi.IOMMU_VFIO_IOAS, g)
    assert g.ioas_id == ioas                                           # still the compat IOAS
    kit.destroy(hwpt)
    kit.destroy(ioas)
    assert kit.err(uapi.IOMMU_VFIO_IOAS, g) == errno.ENODEV
    assert kit.err(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1v2_IOMMU, fn=kit.ioctl_int) == errno.ENODEV
    assert kit.ioas() == ioas                                          # the ID is reused ...
    assert kit.err(uapi.IOMMU_VFIO_IOAS, g) == errno.ENODEV            # ... but not as compat


def test_close_clears_the_compat_ioas():
    kit = Kit()
    set_compat(kit, kit.ioas())
    kit.close()
    assert kit.ctx.vfio_ioas is None and not kit.ctx.objects


# -- GET_API_VERSION / CHECK_EXTENSION (§11.4) ---------------------------------------------
def test_get_api_version_is_0_and_reads_nothing(kit):
    assert kit.ioctl_int(uapi.VFIO_GET_API_VERSION, 8) == 0
    assert kit.frame(uapi.VFIO_GET_API_VERSION, b"") == (0, b"")


EXTENSIONS_WITHOUT_COMPAT = [
    (uapi.VFIO_TYPE1_IOMMU, 1), (uapi.VFIO_TYPE1v2_IOMMU, 1), (uapi.VFIO_UNMAP_ALL, 1),
    (uapi.VFIO_NOIOMMU_IOMMU, 0),                  # built without CONFIG_VFIO_NOIOMMU
    (uapi.VFIO_UPDATE_VADDR, 0), (uapi.VFIO_TYPE1_NESTING_IOMMU, 0),
    (0, 0), (2, 0), (5, 0), (7, 0), (11, 0), ((1 << 32) | 1, 0), (U64_MAX, 0),
]


@pytest.mark.parametrize("ext,want", EXTENSIONS_WITHOUT_COMPAT)
def test_check_extension_values(kit, ext, want):
    assert kit.ioctl_int(uapi.VFIO_CHECK_EXTENSION, ext) == want
    assert kit.frame(uapi.VFIO_CHECK_EXTENSION, struct.pack("<Q", ext))[0] == want


def test_check_extension_dma_cc(kit):
    assert kit.err(uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_DMA_CC_IOMMU, fn=kit.ioctl_int) == errno.ENODEV
    ioas = kit.ioas()
    set_compat(kit, ioas)
    assert kit.ioctl_int(uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_DMA_CC_IOMMU) == 1   # no HWPT at all
    vf, _ = kit.bind(PLAIN)
    kit.attach(vf, ioas)
    assert kit.ioctl_int(uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_DMA_CC_IOMMU) == 1   # emulated IOMMU: coherent
    obj = kit.ctx.objects[ioas]
    incoherent = FakeDomain(coherent=False)
    obj.add_domain(incoherent)
    assert kit.ioctl_int(uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_DMA_CC_IOMMU) == 0
    obj.remove_domain(incoherent)
    assert kit.ioctl_int(uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_DMA_CC_IOMMU) == 1
    # A frame shorter than 8 bytes is zero-extended.
    assert kit.frame(uapi.VFIO_CHECK_EXTENSION, b"\x04") == (1, b"\x04")


# -- SET_IOMMU (§11.4) -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", [0, 2, 4, 5, 6, 7, uapi.VFIO_NOIOMMU_IOMMU, 9, 10, (1 << 32) | 1])
def test_set_iommu_other_types_einval_before_compat_lookup(kit, kind):
    assert kit.err(uapi.VFIO_SET_IOMMU, kind, fn=kit.ioctl_int) == errno.EINVAL
    set_compat(kit, kit.ioas())
    assert kit.err(uapi.VFIO_SET_IOMMU, kind, fn=kit.ioctl_int) == errno.EINVAL


def test_set_iommu_type1_disables_large_pages_type1v2_does_not(kit):
    for kind in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU):
        assert kit.err(uapi.VFIO_SET_IOMMU, kind, fn=kit.ioctl_int) == errno.ENODEV
    v2, v1 = kit.ioas(), kit.ioas()
    set_compat(kit, v2)
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1v2_IOMMU) == 0
    assert option_huge_pages(kit, v2) == 1
    set_compat(kit, v1)
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1_IOMMU) == 0
    assert option_huge_pages(kit, v1) == 0
    assert kit.ctx.objects[v1].iova_alignment == PAGE
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1_IOMMU) == 0         # already off: fine
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1v2_IOMMU) == 0
    assert option_huge_pages(kit, v1) == 0                                        # v2 turns nothing back on
    assert option_huge_pages(kit, v2) == 1


def test_set_iommu_type1_fails_like_option_huge_pages(kit):
    buf = Buffer(2 * PAGE)
    # A lazy mapping at a sub-page IOVA: raising the alignment to PAGE_SIZE is EADDRINUSE.
    lazy = kit.ioas()
    kit.map(lazy, buf.va, 0x800, iova=0x1800)
    set_compat(kit, lazy)
    assert kit.err(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1_IOMMU, fn=kit.ioctl_int) == errno.EADDRINUSE
    assert option_huge_pages(kit, lazy) == 1
    # A domain that already holds a mapping: EINVAL.
    full = kit.ioas()
    vf, _ = kit.bind(PLAIN)
    kit.attach(vf, full)
    kit.map(full, buf.va, PAGE, iova=0x100000)
    set_compat(kit, full)
    assert kit.err(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1_IOMMU, fn=kit.ioctl_int) == errno.EINVAL
    assert option_huge_pages(kit, full) == 1


# -- GET_INFO (§11.4) -----------------------------------------------------------------------
SENT = 0xAA


def get_info(kit, argsz, room=128):
    """GET_INFO with ``argsz`` in a ``room``-byte buffer of SENT bytes ->
    (errno or 0, the buffer's bytes)."""
    buf = ffi.new("unsigned char[]", [SENT] * room)
    struct.pack_into("<I", ffi.buffer(buf), 0, argsz)
    try:
        kit.ioctl(uapi.VFIO_IOMMU_GET_INFO, ffi.cast("struct vfio_iommu_type1_info *", buf))
    except UapiError as e:
        return e.errno, ffi.buffer(buf)[:]
    return 0, ffi.buffer(buf)[:]


def info_bytes(argsz, pgsizes, cap_offset):
    return struct.pack("<IIQII", argsz, uapi.VFIO_IOMMU_INFO_PGSIZES | uapi.VFIO_IOMMU_INFO_CAPS,
                       pgsizes, cap_offset, 0)


def dma_avail_cap(nxt):
    return struct.pack("<HHII", 3, 1, nxt, U32_MAX)


def test_get_info_errors_write_nothing(kit):
    untouched = lambda raw, argsz: raw == struct.pack("<I", argsz) + bytes([SENT]) * 124  # noqa: E731
    r, raw = get_info(kit, 15)
    assert r == errno.EINVAL and untouched(raw, 15)                  # argsz < 16, before ENODEV
    r, raw = get_info(kit, 24)
    assert r == errno.ENODEV and untouched(raw, 24)
    assert kit.err(uapi.VFIO_IOMMU_GET_INFO, 8, fn=kit.ioctl_int) == errno.EFAULT
    set_compat(kit, kit.ioas())
    r, raw = get_info(kit, 0)
    assert r == errno.EINVAL and untouched(raw, 0)
    # Only 16 bytes are read: a frame of 15 faults, one of 16 is enough.
    assert kit.frame(uapi.VFIO_IOMMU_GET_INFO, struct.pack("<IIQ", 16, 0, 0)[:15])[0] == -errno.EFAULT
    r, out = kit.frame(uapi.VFIO_IOMMU_GET_INFO, struct.pack("<IIQ", 16, 0, 0))
    assert (r, out) == (0, info_bytes(72, NO_DOMAIN_PGSIZES, 0)[:16])
    # argsz beyond the memory the caller has: the capability write faults,
    # and the info itself is then not written either.
    sent = struct.pack("<IIQII", 72, 0, 0, 0, 0) + bytes(16)
    assert kit.frame(uapi.VFIO_IOMMU_GET_INFO, sent) == (-errno.EFAULT, sent[:24] + dma_avail_cap(0) + bytes(4))


def test_get_info_chain_bytes_by_argsz(kit):
    """Each piece of the chain is written only where it fits (§11.4); the
    total size is always returned in argsz. Fresh IOAS: one IOVA range."""
    ioas = kit.ioas()
    set_compat(kit, ioas)
    iova_cap = struct.pack("<HHIII", 1, 1, 0, 1, 0) + struct.pack("<QQ", 0, U64_MAX)
    s = bytes([SENT])
    full = info_bytes(72, NO_DOMAIN_PGSIZES, 24) + dma_avail_cap(40) + s * 4 + iova_cap
    short = info_bytes(72, NO_DOMAIN_PGSIZES, 0)
    want = {
        16: short[:16] + s * 112,
        20: short[:20] + s * 108,
        24: short + s * 104,
        35: short + s * 104,                                  # the 12-byte DMA_AVAIL does not fit
        36: short + dma_avail_cap(0) + s * 92,                # it fits; no room for the next cap's offset
        39: short + dma_avail_cap(0) + s * 92,
        40: short + dma_avail_cap(40) + s * 92,               # argsz reaches 40: next is linked
        71: short + dma_avail_cap(40) + s * 92,               # the 32-byte IOVA_RANGE needs 72
        72: full + s * 56,
        128: full + s * 56,                                   # nothing past the chain
    }
    for argsz, expect in want.items():
        r, raw = get_info(kit, argsz)
        assert r == 0, argsz
        assert raw == expect, argsz


def test_get_info_with_a_device_two_ranges_and_partial_fill(kit):
    compat_with_device(kit)
    # The device reserves the MSI window and everything past its 48-bit aperture.
    ranges = [(0, MSI[0] - 1), (MSI[1] + 1, (1 << 48) - 1)]
    iova_cap = struct.pack("<HHIII", 1, 1, 0, 2, 0) + b"".join(struct.pack("<QQ", *r) for r in ranges)
    s = bytes([SENT])
    r, raw = get_info(kit, 88)
    assert r == 0
    assert raw == info_bytes(88, BUILTIN_PGSIZES, 24) + dma_avail_cap(40) + s * 4 + iova_cap + s * 40
    # argsz 72: the first range entry fits (40 + 16 + 16), the head and the second do not.
    r, raw = get_info(kit, 72)
    assert r == 0
    assert raw == (info_bytes(88, BUILTIN_PGSIZES, 0) + dma_avail_cap(40) + s * 4 + s * 16
                   + struct.pack("<QQ", *ranges[0]) + s * 56)


def test_get_info_pgsizes(kit):
    ioas = kit.ioas()
    set_compat(kit, ioas)
    obj = kit.ctx.objects[ioas]
    dom = FakeDomain(page_size=2048)           # sub-page sizes are folded into PAGE_SIZE
    obj.add_domain(dom)
    assert get_info(kit, 24)[1][8:16] == struct.pack("<Q", PAGE)
    obj.remove_domain(dom)
    assert kit.ioctl_int(uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1_IOMMU) == 0
    assert get_info(kit, 24)[1][8:16] == struct.pack("<Q", NO_DOMAIN_PGSIZES)


# -- MAP_DMA (§11.4) ------------------------------------------------------------------------
def test_map_dma_argument_errors_before_enodev(kit):
    m = new("vfio_iommu_type1_dma_map", flags=RW, vaddr=0x10000, iova=0x10000, size=PAGE)
    m.argsz = 31
    assert kit.err(uapi.VFIO_IOMMU_MAP_DMA, m) == errno.EINVAL
    m.argsz = 32
    for flags in (uapi.VFIO_DMA_MAP_FLAG_VADDR, RW | uapi.VFIO_DMA_MAP_FLAG_VADDR, 8, 1 << 31):
        m.flags = flags
        assert kit.err(uapi.VFIO_IOMMU_MAP_DMA, m) == errno.EINVAL
    m.flags = RW
    assert kit.err(uapi.VFIO_IOMMU_MAP_DMA, m) == errno.ENODEV
    # The 32 bytes are read before argsz is looked at.
    short = struct.pack("<IIQQQ", 8, 0, 0, 0, 0)
    assert kit.frame(uapi.VFIO_IOMMU_MAP_DMA, short[:31])[0] == -errno.EFAULT
    assert kit.frame(uapi.VFIO_IOMMU_MAP_DMA, short)[0] == -errno.EINVAL


def test_map_dma_fixed_iova_rules_and_dma(kit):
    compat_with_device(kit)
    buf = Buffer(4 * PAGE)
    m = new("vfio_iommu_type1_dma_map", flags=RW, vaddr=buf.va, iova=0x100000, size=4 * PAGE)
    assert ro_call(kit, uapi.VFIO_IOMMU_MAP_DMA, m) == 0          # nothing is written back
    assert dma(kit, DMA_WRITE, 0x100000 + 10, b"type1")[0] == 0
    assert buf[10:15] == b"type1"
    for vaddr, iova, size, want in [
        (buf.va, 0x100000, PAGE, errno.EEXIST),                   # always a fixed IOVA
        (buf.va, 0x103000, 2 * PAGE, errno.EEXIST),
        (buf.va, 0x200000, 0, errno.EINVAL),
        (U64_MAX - PAGE + 1, 0x200000, 2 * PAGE, errno.EOVERFLOW),
        (buf.va, MSI[0], PAGE, errno.EINVAL),                     # reserved by the device
        (buf.va, 0x200800, PAGE, errno.EINVAL),                   # below iova_alignment
        (8 * PAGE, 0x200000, PAGE, errno.EFAULT),                 # pinned at once: unmapped VA
    ]:
        c = new("vfio_iommu_type1_dma_map", flags=RW, vaddr=vaddr, iova=iova, size=size)
        assert kit.err(uapi.VFIO_IOMMU_MAP_DMA, c) == want, (vaddr, iova, size)
    assert len(kit.ctx.owners) == 1                               # failures left no owner reference


def test_map_dma_permissions(kit):
    compat_with_device(kit)
    buf = Buffer(3 * PAGE)
    buf[0:4] = b"rrrr"
    map_dma(kit, buf.va, 0x100000, PAGE, flags=0)                 # neither READ nor WRITE: accepted
    map_dma(kit, buf.va + PAGE, 0x101000, PAGE, flags=uapi.VFIO_DMA_MAP_FLAG_READ)
    map_dma(kit, buf.va + 2 * PAGE, 0x102000, PAGE, flags=uapi.VFIO_DMA_MAP_FLAG_WRITE)
    assert dma(kit, DMA_READ, 0x100000, length=4)[0] == -errno.EACCES
    assert dma(kit, DMA_WRITE, 0x100000, b"xx")[0] == -errno.EACCES
    buf[PAGE:PAGE + 2] = b"ok"
    assert dma(kit, DMA_READ, 0x101000, length=2) == (0, b"ok")
    assert dma(kit, DMA_WRITE, 0x101000, b"no")[0] == -errno.EACCES
    assert dma(kit, DMA_WRITE, 0x102000, b"wo")[0] == 0
    assert buf[2 * PAGE:2 * PAGE + 2] == b"wo"
    assert buf[0:4] == b"rrrr"


# -- UNMAP_DMA (§11.4) ----------------------------------------------------------------------
def test_unmap_dma_argument_errors_write_nothing(kit):
    u = new("vfio_iommu_type1_dma_unmap", iova=0x1000, size=0x1234)
    u.argsz = 23
    assert kit.err(uapi.VFIO_IOMMU_UNMAP_DMA, u) == errno.EINVAL
    u.argsz = 24
    for flags in (uapi.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, uapi.VFIO_DMA_UNMAP_FLAG_VADDR, 8,
                  uapi.VFIO_DMA_UNMAP_FLAG_ALL | uapi.VFIO_DMA_UNMAP_FLAG_VADDR):
        u.flags = flags
        assert kit.err(uapi.VFIO_IOMMU_UNMAP_DMA, u) == errno.EINVAL
    u.flags = 0
    assert kit.err(uapi.VFIO_IOMMU_UNMAP_DMA, u) == errno.ENODEV
    assert u.size == 0x1234
    short = struct.pack("<IIQQ", 24, 0, 0x1000, 0x1000)
    assert kit.frame(uapi.VFIO_IOMMU_UNMAP_DMA, short[:23]) == (-errno.EFAULT, short[:23])
    set_compat(kit, kit.ioas())
    for iova, size in ((0x1000, 0), (0, 0x1000), (0x1000, 0x1000)):
        u = new("vfio_iommu_type1_dma_unmap", flags=uapi.VFIO_DMA_UNMAP_FLAG_ALL, iova=iova, size=size)
        assert kit.err(uapi.VFIO_IOMMU_UNMAP_DMA, u) == errno.EINVAL
        assert (u.iova, u.size) == (iova, size)
        assert ro_call(kit, uapi.VFIO_IOMMU_UNMAP_DMA, u) == errno.EINVAL   # no write-back tried


def test_unmap_dma_type1v2_never_splits(kit):
    compat_with_device(kit)
    buf = Buffer(32 * PAGE)
    base = 0x100000
    assert unmap_dma(kit, base, 16 * PAGE) == (0, 0)            # nothing mapped: success, 0 bytes
    map_dma(kit, buf.va, base, 16 * PAGE)                        # A
    map_dma(kit, buf.va + 16 * PAGE, base + 16 * PAGE, 16 * PAGE)   # B
    assert unmap_dma(kit, base + 16 * PAGE, 4 * PAGE) == (errno.ENOENT, 0)   # partial: refused
    assert unmap_dma(kit, base + 20 * PAGE, 12 * PAGE) == (errno.ENOENT, 0)
    # A is inside, B only partly: A goes (no rollback) and its bytes come back with ENOENT.
    assert unmap_dma(kit, base, 24 * PAGE) == (errno.ENOENT, 16 * PAGE)
    assert dma(kit, DMA_WRITE, base, b"a")[0] == -errno.EFAULT
    assert dma(kit, DMA_WRITE, base + 16 * PAGE, b"b")[0] == 0
    # The struct is written back even when the unmap step fails: in read-only
    # memory that write-back is what fails.
    zero = new("vfio_iommu_type1_dma_unmap", iova=base, size=0)
    assert kit.err(uapi.VFIO_IOMMU_UNMAP_DMA, zero) == errno.EINVAL
    assert ro_call(kit, uapi.VFIO_IOMMU_UNMAP_DMA, zero) == errno.EFAULT
    assert unmap_dma(kit, U64_MAX - PAGE + 1, 2 * PAGE) == (errno.EOVERFLOW, 0)
    assert unmap_dma(kit, base + 16 * PAGE, 16 * PAGE) == (0, 16 * PAGE)
    assert len(kit.ctx.owners) == 0
    map_dma(kit, buf.va, base, 4 * PAGE)
    map_dma(kit, buf.va, base + 8 * PAGE, 8 * PAGE)
    assert unmap_dma(kit, 0, 0, flags=uapi.VFIO_DMA_UNMAP_FLAG_ALL) == (0, 12 * PAGE)
    assert unmap_dma(kit, 0, 0, flags=uapi.VFIO_DMA_UNMAP_FLAG_ALL) == (0, 0)
    assert not kit.ctx.objects[kit.ctx.vfio_ioas.id].areas


def test_unmap_dma_type1_splits_and_dma_keeps_working(kit):
    ioas = compat_with_device(kit, uapi.VFIO_TYPE1_IOMMU)
    buf = Buffer(16 * PAGE)
    base = 0x40000000
    map_dma(kit, buf.va, base, 16 * PAGE)
    pages = ioas.areas[base].pages
    assert unmap_dma(kit, base + 4 * PAGE, 4 * PAGE) == (0, 4 * PAGE)
    left, right = ioas.areas[base], ioas.areas[base + 8 * PAGE]
    assert [(a.iova, a.length, a.user_va) for a in ioas.areas.values()] == [
        (base, 4 * PAGE, buf.va), (base + 8 * PAGE, 8 * PAGE, buf.va + 8 * PAGE)]
    assert left.pages is right.pages is pages and set(pages.areas()) == {left, right}
    owner = left.owner
    assert right.owner is owner and owner.refs == 2 and len(kit.ctx.owners) == 1
    assert ioas.free.containing(base + 5 * PAGE) == (base + 4 * PAGE, base + 8 * PAGE - 1)
    # DMA through the remaining pieces lands in the buffer; the hole faults.
    assert dma(kit, DMA_WRITE, base + PAGE + 3, b"left")[0] == 0
    assert dma(kit, DMA_WRITE, base + 15 * PAGE, b"right")[0] == 0
    assert buf[PAGE + 3:PAGE + 7] == b"left" and buf[15 * PAGE:15 * PAGE + 5] == b"right"
    assert dma(kit, DMA_WRITE, base + 5 * PAGE, b"hole")[0] == -errno.EFAULT
    assert buf[5 * PAGE:5 * PAGE + 4] == bytes(4)
    # IOMMU_IOAS_UNMAP keeps its own rule: a piece only partly inside is ENOENT.
    u = new("iommu_ioas_unmap", ioas_id=ioas.id, iova=base + 8 * PAGE, length=PAGE)
    assert kit.err(uapi.IOMMU_IOAS_UNMAP, u) == errno.ENOENT
    # The hole is free IOVA again.
    map_dma(kit, buf.va + 4 * PAGE, base + 4 * PAGE, 4 * PAGE)
    assert dma(kit, DMA_WRITE, base + 5 * PAGE, b"back")[0] == 0
    assert buf[5 * PAGE:5 * PAGE + 4] == b"back"
    # One range across three areas, cut inside the first and the last.
    assert unmap_dma(kit, base + 2 * PAGE, 8 * PAGE) == (0, 8 * PAGE)
    assert [(a.iova, a.length) for a in ioas.areas.values()] == [
        (base, 2 * PAGE), (base + 10 * PAGE, 6 * PAGE)]
    assert owner.refs == 2 and len(kit.ctx.owners) == 1
    assert dma(kit, DMA_READ, base + PAGE + 3, length=4) == (0, b"left")
    assert dma(kit, DMA_READ, base + 15 * PAGE, length=5) == (0, b"right")
    assert dma(kit, DMA_READ, base + 9 * PAGE, length=1)[0] == -errno.EFAULT
    # Unmapping what is left releases everything.
    assert unmap_dma(kit, base, 16 * PAGE) == (0, 8 * PAGE)
    assert not ioas.areas and len(kit.ctx.owners) == 0 and owner.pidfd == -1
    assert list(pages.areas()) == []
    assert dma(kit, DMA_READ, base, length=1)[0] == -errno.EFAULT
    assert dma(kit, DMA_READ, base + 15 * PAGE, length=1)[0] == -errno.EFAULT


def test_unmap_dma_type1_misaligned_cut(kit):
    ioas = compat_with_device(kit, uapi.VFIO_TYPE1_IOMMU)
    buf = Buffer(8 * PAGE)
    base = 0x100000
    map_dma(kit, buf.va, base, 8 * PAGE)
    # The end is cut first (at base + 4 pages), then the start at base + 0x800
    # is refused: EINVAL, nothing written back, and the end cut stays.
    assert unmap_dma(kit, base + 0x800, 4 * PAGE - 0x800) == (errno.EINVAL, 4 * PAGE - 0x800)
    assert [(a.iova, a.length) for a in ioas.areas.values()] == [(base, 4 * PAGE), (base + 4 * PAGE, 4 * PAGE)]
    assert unmap_dma(kit, base + PAGE, 0x801) == (errno.EINVAL, 0x801)   # a misaligned end
    # A cut right after the area's first byte is no cut at all: the range is
    # then only partly covering, which the unmap itself refuses.
    assert unmap_dma(kit, base + 1, PAGE - 1) == (errno.ENOENT, 0)
    assert [(a.iova, a.length) for a in ioas.areas.values()] == [
        (base, PAGE), (base + PAGE, 3 * PAGE), (base + 4 * PAGE, 4 * PAGE)]   # (the end cut was made)
    assert unmap_dma(kit, base + 4 * PAGE, 4 * PAGE) == (0, 4 * PAGE)     # the pieces are areas
    assert unmap_dma(kit, base, 4 * PAGE) == (0, 4 * PAGE)
    assert not ioas.areas and len(kit.ctx.owners) == 0


def test_type1_split_of_copied_pages(kit):
    """A split area keeps sharing its memory with an IOAS_COPY of it."""
    ioas = compat_with_device(kit, uapi.VFIO_TYPE1_IOMMU)
    other = kit.ioas()
    buf = Buffer(4 * PAGE)
    kit.map(other, buf.va, 4 * PAGE, iova=0x10000)
    c = new("iommu_ioas_copy", flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
            | uapi.IOMMU_IOAS_MAP_WRITEABLE, dst_ioas_id=ioas.id, src_ioas_id=other,
            length=4 * PAGE, dst_iova=0x200000, src_iova=0x10000)
    kit.ioctl(uapi.IOMMU_IOAS_COPY, c)
    src = kit.ctx.objects[other].areas[0x10000]
    assert unmap_dma(kit, 0x201000, PAGE) == (0, PAGE)
    pieces = list(ioas.areas.values())
    assert len(pieces) == 2 and set(src.pages.areas()) == {src, *pieces}
    assert src.owner.refs == 3
    assert dma(kit, DMA_WRITE, 0x203000, b"copy")[0] == 0
    assert buf[3 * PAGE:3 * PAGE + 4] == b"copy"
    kit.destroy(other)
    assert set(pieces[0].pages.areas()) == set(pieces) and pieces[0].owner.refs == 2


def test_split_at_refusals(kit):
    """Ioas.split_at, the kernel's iopt_area_split, outside the type1 path."""
    ioas = kit.ctx.objects[kit.ioas()]
    buf = Buffer(4 * PAGE)
    kit.map(ioas.id, buf.va, 4 * PAGE, iova=0x100000)
    area = ioas.areas[0x100000]
    ioas.split_at(0x100000)                   # the first byte, the last byte, or no area: no-op
    ioas.split_at(0x100000 + 4 * PAGE - 1)
    ioas.split_at(0x50)
    assert list(ioas.areas.values()) == [area]
    ioas.split_at(0x100000 + 0x7FF)           # alignment 1 (no domain, large pages on): allowed
    assert [(a.iova, a.length, a.user_va) for a in ioas.areas.values()] == [
        (0x100000, 0x800, buf.va), (0x100800, 4 * PAGE - 0x800, buf.va + 0x800)]
    ioas.areas[0x100800].locks = 1            # held by an in-kernel access
    with pytest.raises(UapiError) as e:
        ioas.split_at(0x100000 + 2 * PAGE - 1)
    assert e.value.errno == errno.EINVAL and len(ioas.areas) == 2
    ioas.areas[0x100800].locks = 0
    # A domain holding the area while large pages are on: huge IOPTEs may exist.
    other = kit.ctx.objects[kit.ioas()]
    kit.map(other.id, buf.va, 4 * PAGE, iova=0x100000)
    vf, _ = kit.bind(PLAIN)
    kit.attach(vf, other.id)
    with pytest.raises(UapiError) as e:
        other.split_at(0x100000 + 2 * PAGE - 1)
    assert e.value.errno == errno.EINVAL and len(other.areas) == 1
