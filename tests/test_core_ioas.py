"""Unit tests of the IOAS object and its ioctls, driven through the dispatcher
with no mount (reference §3 generic rules, §4 object model, §5 layouts, §7).

Structs live in this process's memory and are passed by address, so core
reads and writes them with process_vm_readv/writev as it would a client's.
Domains are fakes that record map/unmap calls.
"""
import ctypes
import errno
import os
import struct
import threading

import pytest

from core.iommufd import dispatch, ucmd

from core import uapi
from core.caller import Caller
from core.iommufd.context import Context, Obj
from core.errors import UapiError
from core.iommufd.ioas import PROT_READ, PROT_WRITE, Ioas
from core.uapi import ffi
from core.mm.usermem import FrameArg, MemArg

U64_MAX = (1 << 64) - 1
PAGE = 4096
MB = 1 << 20
R = uapi.IOMMU_IOAS_MAP_READABLE
W = uapi.IOMMU_IOAS_MAP_WRITEABLE
FIXED = uapi.IOMMU_IOAS_MAP_FIXED_IOVA

# -- memory of this process ------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_R, PROT_RW = 1, 3


def mmap(length, prot=PROT_RW):
    a = _libc.mmap(None, length, prot, 0x22, -1, 0)  # MAP_PRIVATE | MAP_ANONYMOUS
    assert a not in (None, ctypes.c_void_p(-1).value)
    return a


def munmap(a, length):
    assert _libc.munmap(a, length) == 0


def mprotect(a, length, prot):
    assert _libc.mprotect(a, length, prot) == 0


def hole_va(length=4 * PAGE):
    """A VA range that is not mapped in this process."""
    a = mmap(length)
    munmap(a, length)
    return a


def peek(a, n):
    return ctypes.string_at(a, n)


def poke(a, data):
    ctypes.memmove(a, data, len(data))


# -- a context and its ioctls ------------------------------------------------------------
def new(struct_name, **fields):
    c = ffi.new(f"struct {struct_name} *")
    c.size = ffi.sizeof(c[0])
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def addr(cdata):
    return int(ffi.cast("uintptr_t", cdata))


def raw(cdata):
    return bytes(ffi.buffer(cdata))


class Env:
    def __init__(self, uid=None):
        uid = os.getuid() if uid is None else uid
        self.ctx = Context(None, uid)
        self.caller = Caller(threading.get_native_id(), uid, os.getgid())

    def call(self, cmd, arg):
        """ioctl with ``arg``: a cffi struct (by address), an int address, or an arg object."""
        if isinstance(arg, int):
            arg = MemArg(self.caller.mem, arg)
        elif isinstance(arg, ffi.CData):
            arg = MemArg(self.caller.mem, addr(arg))
        return dispatch.iommufd_ioctl(self.ctx, self.caller, cmd, arg)

    def err(self, cmd, arg):
        with pytest.raises(UapiError) as ei:
            self.call(cmd, arg)
        return ei.value.errno

    def ioas(self):
        c = new("iommu_ioas_alloc")
        self.call(uapi.IOMMU_IOAS_ALLOC, c)
        return c.out_ioas_id

    def obj(self, oid):
        return self.ctx.objects[oid]

    def map_cmd(self, ioas_id, va, length, iova=None, flags=R | W):
        if iova is not None:
            flags |= FIXED
        return new("iommu_ioas_map", flags=flags, ioas_id=ioas_id, user_va=va, length=length,
                   iova=iova or 0)

    def map(self, ioas_id, va, length, iova=None, flags=R | W):
        c = self.map_cmd(ioas_id, va, length, iova, flags)
        self.call(uapi.IOMMU_IOAS_MAP, c)
        return c.iova

    def map_err(self, ioas_id, va, length, iova=None, flags=R | W):
        return self.err(uapi.IOMMU_IOAS_MAP, self.map_cmd(ioas_id, va, length, iova, flags))

    def unmap(self, ioas_id, iova, length):
        c = new("iommu_ioas_unmap", ioas_id=ioas_id, iova=iova, length=length)
        self.call(uapi.IOMMU_IOAS_UNMAP, c)
        return c.length

    def unmap_err(self, ioas_id, iova, length):
        return self.err(uapi.IOMMU_IOAS_UNMAP, new("iommu_ioas_unmap", ioas_id=ioas_id, iova=iova, length=length))

    def ranges(self, ioas_id, capacity=16):
        arr = ffi.new("struct iommu_iova_range[]", max(capacity, 1))
        c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=capacity, allowed_iovas=addr(arr))
        self.call(uapi.IOMMU_IOAS_IOVA_RANGES, c)
        return [(arr[i].start, arr[i].last) for i in range(c.num_iovas)], c.out_iova_alignment

    def allow(self, ioas_id, ranges):
        arr = ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        for i, (s, l) in enumerate(ranges):
            arr[i].start, arr[i].last = s, l
        c = new("iommu_ioas_allow_iovas", ioas_id=ioas_id, num_iovas=len(ranges), allowed_iovas=addr(arr))
        return self.call(uapi.IOMMU_IOAS_ALLOW_IOVAS, c)

    def copy(self, dst, src, src_iova, length, dst_iova=None, flags=R | W):
        if dst_iova is not None:
            flags |= FIXED
        c = new("iommu_ioas_copy", flags=flags, dst_ioas_id=dst, src_ioas_id=src, length=length,
                dst_iova=dst_iova or 0, src_iova=src_iova)
        self.call(uapi.IOMMU_IOAS_COPY, c)
        return c.dst_iova

    def copy_err(self, dst, src, src_iova, length, dst_iova=None, flags=R | W):
        if dst_iova is not None:
            flags |= FIXED
        c = new("iommu_ioas_copy", flags=flags, dst_ioas_id=dst, src_ioas_id=src, length=length,
                dst_iova=dst_iova or 0, src_iova=src_iova)
        return self.err(uapi.IOMMU_IOAS_COPY, c)

    def option(self, option_id, op, object_id=0, val64=0):
        c = new("iommu_option", option_id=option_id, op=op, object_id=object_id, val64=val64)
        self.call(uapi.IOMMU_OPTION, c)
        return c.val64

    def option_err(self, option_id, op, object_id=0, val64=0, reserved=0):
        c = new("iommu_option", option_id=option_id, op=op, object_id=object_id, val64=val64)
        setattr(c, "__reserved", reserved)
        return self.err(uapi.IOMMU_OPTION, c)

    def huge(self, ioas_id, enable):
        return self.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, ioas_id, int(enable))


class FakeDomain:
    """The domain interface of core.iommufd.ioas, recording what is mapped."""

    def __init__(self, page_size=PAGE, aperture=None, fail_at=None):
        self.page_size = page_size
        if aperture is not None:
            self.aperture = aperture
        self.maps = {}
        self.calls = 0
        self.fail_at = fail_at

    def map(self, iova, user_va, length, prot, huge, owner=None):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise OSError(errno.ENOMEM, "fake table full")
        assert iova not in self.maps
        self.maps[iova] = (user_va, length, prot, huge)

    def unmap(self, iova, length):
        got = self.maps.pop(iova)
        assert got[1] == length
        return length


class Holder(Obj):
    """An object that references another (like a HWPT holds its IOAS)."""

    kind = "HOLDER"

    def __init__(self, ctx, target=None):
        super().__init__(ctx)
        self.target = target.get() if target is not None else None

    def destroy(self):
        if self.target is not None:
            self.target.put()


@pytest.fixture
def env():
    e = Env()
    yield e
    e.ctx.close()
    assert len(e.ctx.owners) == 0


@pytest.fixture
def buf():
    """64 KiB of readable and writable memory, page aligned."""
    n = 16 * PAGE
    a = mmap(n)
    yield a
    munmap(a, n)


def state(ioas):
    """A comparable snapshot of everything a failed call must leave alone."""
    return ([(a.iova, a.length, a.user_va, a.prot, a.pinned) for a in ioas.areas.values()],
            sorted(ioas.reserved.union), list(ioas.allowed), list(ioas.domains),
            ioas.iova_alignment, ioas.disable_large_pages, list(ioas.free))


# == §3 generic dispatch rules ==================================================================
def test_unreadable_size_is_efault(env):
    assert env.err(uapi.IOMMU_IOAS_ALLOC, 0) == errno.EFAULT
    assert env.err(uapi.IOMMU_IOAS_ALLOC, FrameArg(b"\x0c\x00")) == errno.EFAULT


def test_iow_encoded_variant_is_enotty_but_efault_first(env):
    iow = (1 << 30) | (12 << 16) | uapi.IOMMU_IOAS_ALLOC
    assert env.err(iow, new("iommu_ioas_alloc")) == errno.ENOTTY
    assert env.err(iow, 0) == errno.EFAULT
    # An empty table slot (0x95..0x9f): size read first, then ENOTTY.
    assert env.err(0x3B95, new("iommu_ioas_alloc")) == errno.ENOTTY
    assert env.err(0x3B95, 0) == errno.EFAULT
    assert env.ctx.objects == {}


@pytest.mark.parametrize("cmd,struct_name,minsz", [
    (uapi.IOMMU_IOAS_ALLOC, "iommu_ioas_alloc", 12),
    (uapi.IOMMU_IOAS_ALLOW_IOVAS, "iommu_ioas_allow_iovas", 24),
    (uapi.IOMMU_IOAS_COPY, "iommu_ioas_copy", 40),
    (uapi.IOMMU_IOAS_IOVA_RANGES, "iommu_ioas_iova_ranges", 32),
    (uapi.IOMMU_IOAS_MAP, "iommu_ioas_map", 40),
    (uapi.IOMMU_IOAS_UNMAP, "iommu_ioas_unmap", 24),
    (uapi.IOMMU_OPTION, "iommu_option", 24),
])
def test_size_below_minimum_is_einval(env, cmd, struct_name, minsz):
    assert dispatch.OPS[cmd & 0xFF].min_size == minsz == ffi.sizeof(f"struct {struct_name}")
    c = new(struct_name)
    c.size = minsz - 1
    assert env.err(cmd, c) == errno.EINVAL
    c.size = 0
    assert env.err(cmd, c) == errno.EINVAL


def test_nonzero_tail_is_e2big_and_zero_tail_is_accepted(env):
    blob = ffi.new("char[]", 24)
    poke(addr(blob), struct.pack("<III", 24, 0, 0) + b"\0" * 11 + b"\x01")
    assert env.err(uapi.IOMMU_IOAS_ALLOC, addr(blob)) == errno.E2BIG
    assert env.ctx.objects == {}
    poke(addr(blob), struct.pack("<III", 24, 0, 0x77777777) + b"\xee" * 12)
    poke(addr(blob) + 12, b"\0" * 12)
    env.call(uapi.IOMMU_IOAS_ALLOC, addr(blob))
    # Only min(size, sizeof) = 12 bytes come back: the zero tail stays as it was.
    assert peek(addr(blob), 24) == struct.pack("<III", 24, 0, 1) + b"\0" * 12


def test_short_struct_is_zero_filled_and_written_back_short(env, monkeypatch):
    # No IOAS struct has min < sizeof, so the rule is shown on a test-only op
    # in an empty slot with iommu_hwpt_alloc's layout (min 24, sizeof 48).
    seen = {}

    def handler(ctx, caller, cmd):
        seen["tail"] = bytes(ffi.buffer(cmd))[24:]
        cmd.out_hwpt_id = 0xABCD
        cmd.data_uptr = 0x1122334455667788  # beyond the caller's 24 bytes

    op = ucmd.Op(0x3B9F, "iommu_hwpt_alloc", "__reserved", handler, "struct")
    monkeypatch.setitem(dispatch.OPS, 0x9F, op)
    blob = ffi.new("char[]", 48)
    poke(addr(blob), struct.pack("<6I", 24, 0, 0, 0, 0, 0) + b"\x5a" * 24)
    env.call(0x3B9F, addr(blob))
    assert seen["tail"] == b"\0" * 24
    assert peek(addr(blob), 48) == struct.pack("<6I", 24, 0, 0, 0, 0xABCD, 0) + b"\x5a" * 24


def test_frame_arg_gets_the_struct_back(env):
    arg = FrameArg(struct.pack("<III", 12, 0, 0))
    env.call(uapi.IOMMU_IOAS_ALLOC, arg)
    assert bytes(arg.buf) == struct.pack("<III", 12, 0, 1)


# == §4 object model ==============================================================================
def test_ids_start_at_1_and_lowest_free_is_reused(env):
    assert [env.ioas() for _ in range(3)] == [1, 2, 3]
    env.call(uapi.IOMMU_DESTROY, new("iommu_destroy", id=2))
    assert env.ioas() == 2
    env.call(uapi.IOMMU_DESTROY, new("iommu_destroy", id=3))
    env.call(uapi.IOMMU_DESTROY, new("iommu_destroy", id=1))
    assert env.ioas() == 1
    assert env.ioas() == 3


def test_failed_alloc_releases_its_id(env):
    assert env.ioas() == 1
    # The struct is readable but not writable: the write-back faults after the
    # object was made, so it is aborted and its ID released.
    page = mmap(PAGE)
    poke(page, struct.pack("<III", 12, 0, 0))
    mprotect(page, PAGE, PROT_R)
    try:
        assert env.err(uapi.IOMMU_IOAS_ALLOC, page) == errno.EFAULT
    finally:
        munmap(page, PAGE)
    assert list(env.ctx.objects) == [1] and env.ctx.pending == []
    assert env.ioas() == 2
    c = new("iommu_ioas_alloc", flags=1)
    assert env.err(uapi.IOMMU_IOAS_ALLOC, c) == errno.EOPNOTSUPP
    assert c.out_ioas_id == 0
    assert env.ioas() == 3


def test_wrong_type_or_absent_id_is_enoent(env, buf):
    other = Holder(env.ctx)
    env.ctx.add_published(other)
    for bad in (other.id, 99, 0):
        assert env.map_err(bad, buf, PAGE) == errno.ENOENT
        assert env.unmap_err(bad, 0, U64_MAX) == errno.ENOENT
        assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, new("iommu_ioas_iova_ranges", ioas_id=bad)) == errno.ENOENT
        assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, new("iommu_ioas_allow_iovas", ioas_id=bad)) == errno.ENOENT
        assert env.option_err(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, bad) == errno.ENOENT


def test_destroy_is_ebusy_while_referenced(env, buf):
    ioas_id = env.ioas()
    env.map(ioas_id, buf, PAGE)
    holder = Holder(env.ctx, env.obj(ioas_id))
    env.ctx.add_published(holder)
    d = new("iommu_destroy", id=ioas_id)
    assert env.err(uapi.IOMMU_DESTROY, d) == errno.EBUSY
    assert env.obj(ioas_id).areas
    env.call(uapi.IOMMU_DESTROY, new("iommu_destroy", id=holder.id))
    env.call(uapi.IOMMU_DESTROY, d)
    assert env.err(uapi.IOMMU_DESTROY, d) == errno.ENOENT
    assert len(env.ctx.owners) == 0


# == IOMMU_IOAS_ALLOC / IOVA_RANGES ==================================================================
def test_alloc_writes_back_the_id(env):
    c = new("iommu_ioas_alloc")
    env.call(uapi.IOMMU_IOAS_ALLOC, c)
    assert raw(c) == struct.pack("<III", 12, 0, 1)
    assert isinstance(env.obj(1), Ioas) and env.obj(1).kind == "IOAS"


def test_iova_ranges_fresh_ioas(env):
    ioas_id = env.ioas()
    arr = ffi.new("struct iommu_iova_range[2]")
    arr[1].start = arr[1].last = 0x5A5A
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=2, allowed_iovas=addr(arr))
    env.call(uapi.IOMMU_IOAS_IOVA_RANGES, c)
    assert raw(c) == struct.pack("<IIIIQQ", 32, ioas_id, 1, 0, addr(arr), 1)
    assert bytes(ffi.buffer(arr)) == struct.pack("<QQQQ", 0, U64_MAX, 0x5A5A, 0x5A5A)


def test_iova_ranges_emsgsize_still_writes_back(env):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    ioas.add_reserved("t", [(0, 0xFFF), (0x10000, 0x1FFFF), (0x30000, 0x3FFFF)])
    # Holes: [0x1000,0xffff] [0x20000,0x2ffff] [0x40000,U64_MAX].
    arr = ffi.new("struct iommu_iova_range[3]")
    arr[2].start = arr[2].last = 0x5A5A
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=2, allowed_iovas=addr(arr))
    assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, c) == errno.EMSGSIZE
    assert raw(c) == struct.pack("<IIIIQQ", 32, ioas_id, 3, 0, addr(arr), 1)
    assert bytes(ffi.buffer(arr)) == struct.pack("<6Q", 0x1000, 0xFFFF, 0x20000, 0x2FFFF, 0x5A5A, 0x5A5A)
    # Capacity 0 with a NULL array: nothing is written but the struct.
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=0, allowed_iovas=0)
    assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, c) == errno.EMSGSIZE
    assert (c.num_iovas, c.out_iova_alignment) == (3, 1)


def test_iova_ranges_unwritable_array_is_efault_without_write_back(env):
    ioas_id = env.ioas()
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=4, allowed_iovas=hole_va())
    before = raw(c)
    assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, c) == errno.EFAULT
    assert raw(c) == before
    ro = mmap(PAGE, PROT_R)
    try:
        c.allowed_iovas = ro
        assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, c) == errno.EFAULT
        assert raw(c) == before[:16] + struct.pack("<QQ", ro, 0)
    finally:
        munmap(ro, PAGE)


def test_iova_ranges_reserved_field_and_everything_reserved(env):
    ioas_id = env.ioas()
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas_id)
    setattr(c, "__reserved", 1)
    assert env.err(uapi.IOMMU_IOAS_IOVA_RANGES, c) == errno.EOPNOTSUPP
    env.obj(ioas_id).add_reserved("all", [(0, U64_MAX)])
    assert env.ranges(ioas_id) == ([], 1)


def test_iova_ranges_of_a_mock_like_domain(env):
    ioas_id = env.ioas()
    env.obj(ioas_id).add_domain(FakeDomain(2048, aperture=(1 << 24, (1 << 31) - 1)))
    assert env.ranges(ioas_id) == ([(0x1000000, 0x7FFFFFFF)], 2048)


# == IOMMU_IOAS_ALLOW_IOVAS ==============================================================================
def test_allow_iovas_rules_in_order(env):
    ioas_id = env.ioas()
    c = new("iommu_ioas_allow_iovas", ioas_id=99, num_iovas=1, allowed_iovas=hole_va())
    setattr(c, "__reserved", 1)
    assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, c) == errno.EOPNOTSUPP
    setattr(c, "__reserved", 0)
    assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, c) == errno.ENOENT
    c.ioas_id = ioas_id
    assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, c) == errno.EFAULT
    with pytest.raises(UapiError) as ei:
        env.allow(ioas_id, [(0x1000, 0x1000)])
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(UapiError) as ei:
        env.allow(ioas_id, [(0x2000, 0x1000)])
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(UapiError) as ei:
        env.allow(ioas_id, [(0x10000, 0x1FFFF), (0x1000, 0x10000)])
    assert ei.value.errno == errno.EINVAL
    assert env.obj(ioas_id).allowed == []
    env.allow(ioas_id, [(0x10000, 0x1FFFF), (0x1000, 0xFFFF)])  # adjacent is fine
    assert env.obj(ioas_id).allowed == [(0x1000, 0xFFFF), (0x10000, 0x1FFFF)]


def test_allow_iovas_entries_are_checked_before_a_later_fault(env):
    ioas_id = env.ioas()
    two = mmap(2 * PAGE)
    munmap(two + PAGE, PAGE)
    try:
        # Entry 0 is the last 16 bytes of a mapped page, entry 1 is unmapped.
        poke(two + PAGE - 16, struct.pack("<QQ", 5, 5))
        c = new("iommu_ioas_allow_iovas", ioas_id=ioas_id, num_iovas=2, allowed_iovas=two + PAGE - 16)
        assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, c) == errno.EINVAL
        poke(two + PAGE - 16, struct.pack("<QQ", 5, 6))
        assert env.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, c) == errno.EFAULT
        c.num_iovas = 1
        env.call(uapi.IOMMU_IOAS_ALLOW_IOVAS, c)
        assert env.obj(ioas_id).allowed == [(5, 6)]
    finally:
        munmap(two, PAGE)


def test_allow_iovas_against_reserved_is_eaddrinuse_and_keeps_old_list(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    env.allow(ioas_id, [(0x100000, 0x1FFFFF)])
    ioas.add_reserved("t", [(0x300000, 0x3FFFFF)])
    with pytest.raises(UapiError) as ei:
        env.allow(ioas_id, [(0x200000, 0x300000)])
    assert ei.value.errno == errno.EADDRINUSE
    assert ioas.allowed == [(0x100000, 0x1FFFFF)]
    # Reserving over an allowed range is refused the other way round.
    with pytest.raises(UapiError) as ei:
        ioas.add_reserved("u", [(0x1FF000, 0x200FFF)])
    assert ei.value.errno == errno.EADDRINUSE
    assert "u" not in ioas.reserved
    # Allowed ranges steer only the allocator; a fixed IOVA may lie outside.
    assert env.map(ioas_id, buf, PAGE) == 0x100000
    assert env.map(ioas_id, buf, PAGE, iova=0x800000) == 0x800000
    env.allow(ioas_id, [])
    assert ioas.allowed == []
    assert env.map(ioas_id, buf, PAGE) == 0x1000


# == IOMMU_IOAS_MAP ===============================================================================
def test_map_argument_checks_in_order(env, buf):
    ioas_id = env.ioas()
    # Unknown flag and __reserved come before the overflow rule.
    assert env.map_err(ioas_id, buf, PAGE, flags=R | 8) == errno.EOPNOTSUPP
    c = env.map_cmd(99, buf, U64_MAX, flags=R)
    setattr(c, "__reserved", 1)
    assert env.err(uapi.IOMMU_IOAS_MAP, c) == errno.EOPNOTSUPP
    # Overflow before the flags' R/W rule, before the ID.
    assert env.map_err(99, buf, U64_MAX, flags=0) == errno.EOVERFLOW
    c = env.map_cmd(99, buf, PAGE, flags=0)
    c.iova = U64_MAX
    assert env.err(uapi.IOMMU_IOAS_MAP, c) == errno.EOVERFLOW
    assert env.map_err(99, buf, PAGE, flags=FIXED) == errno.EINVAL
    assert env.map_err(99, buf, PAGE) == errno.ENOENT
    # Then the memory range itself.
    assert env.map_err(ioas_id, U64_MAX - PAGE + 2, PAGE) == errno.EOVERFLOW
    assert env.map_err(ioas_id, buf, 0) == errno.EINVAL
    assert env.map_err(ioas_id, 0, U64_MAX - PAGE + 1) == errno.EINVAL
    assert not env.obj(ioas_id).areas and len(env.ctx.owners) == 0


def test_map_fixed_rules(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    ioas.add_reserved("t", [(0x100000, 0x100FFF)])
    assert env.map(ioas_id, buf, 2 * PAGE, iova=0x10000) == 0x10000
    assert env.map_err(ioas_id, buf, PAGE, iova=0x11000) == errno.EEXIST
    assert env.map_err(ioas_id, buf, PAGE, iova=0xF001) == errno.EEXIST  # alignment 1: EEXIST
    assert env.map_err(ioas_id, buf, 2 * PAGE, iova=0xFF000) == errno.EINVAL  # reserved
    # Reserved wins over an overlapping area (checked first).
    ioas.add_reserved("u", [(0x20000, 0x20FFF)])
    assert env.map_err(ioas_id, buf, 0x20000, iova=0x8000) == errno.EINVAL
    assert env.map_err(ioas_id, buf, 2 * PAGE, iova=U64_MAX - PAGE) == errno.EOVERFLOW
    env.huge(ioas_id, False)  # iova_alignment 4096
    assert env.map_err(ioas_id, buf, PAGE, iova=0x30800) == errno.EINVAL
    assert env.map_err(ioas_id, buf, PAGE + 1, iova=0x30000) == errno.EINVAL
    assert env.map_err(ioas_id, buf + 0x800, PAGE, iova=0x30000) == errno.EINVAL  # page offset
    # Misaligned IOVA is refused before an overflow or a collision.
    assert env.map_err(ioas_id, buf, 2 * PAGE, iova=U64_MAX - PAGE - 0x7FF) == errno.EINVAL
    assert [(a.iova, a.length) for a in ioas.areas.values()] == [(0x10000, 2 * PAGE)]
    assert env.obj(ioas_id).area_at(0x10000).owner.refs == 1


def test_map_writes_back_the_struct(env, buf):
    ioas_id = env.ioas()
    c = env.map_cmd(ioas_id, buf, PAGE, flags=R)
    env.call(uapi.IOMMU_IOAS_MAP, c)
    assert raw(c) == struct.pack("<IIIIQQQ", 40, R, ioas_id, 0, buf, PAGE, 0x1000)
    area = env.obj(ioas_id).area_at(0x1FFF)
    assert (area.iova, area.length, area.user_va, area.prot, area.writeable_source, area.pinned) == \
        (0x1000, PAGE, buf, PROT_READ, False, False)
    assert area.owner.tgid == os.getpid() and area.owner.refs == 1
    assert env.obj(ioas_id).area_at(0x2000) is None and env.obj(ioas_id).area_at(0xFFF) is None


@pytest.mark.parametrize("va,length,want", [
    (0x7F0000001000, 0x1000, 0x1000),        # page-sized: first page after IOVA 0
    (0x7F0000200000, 0x200000, 0x200000),    # 2 MiB from a 2 MiB-aligned VA
    (0x40000000, 0x40000000, 0x200000),      # alignment capped at 2 MiB
    (0x7F0000003000, 0x4000, 0x1000),        # VA alignment (4 KiB) lowers roundup(16 KiB)
    (0, 0x3000, 0x4000),                     # VA 0: roundup_pow_of_two(length) alone
    (0x9010, 0x10, 0x1010),                  # sub-page: the page offset is kept
    (0x7F0000000800, 0x800, 0x1800),
])
def test_auto_iova_alignment(env, va, length, want):
    ioas_id = env.ioas()
    assert env.map(ioas_id, va, length) == want


def test_auto_iova_first_hole_and_or_of_page_offset(env):
    ioas_id = env.ioas()
    assert env.map(ioas_id, 0x5000, 0x20, iova=0x1000) == 0x1000
    # align 16, offset 0x10: the window start 0x1000 becomes 0x1010 (inside
    # the area); the next hole starts at 0x1020 and ALIGN(0x1020,16)|0x10 =
    # 0x1030, the kernel's arithmetic (an OR, not an add).
    assert env.map(ioas_id, 0x9010, 0x10) == 0x1030
    assert env.map(ioas_id, 0x7000, PAGE) == 0x2000
    env.unmap(ioas_id, 0x1000, 0x20)
    assert env.map(ioas_id, 0x7000, PAGE) == 0x3000
    assert env.map(ioas_id, 0xA000, 0x20) == 0x1000


def test_auto_iova_errors(env):
    ioas_id = env.ioas()
    assert env.map_err(ioas_id, 0x1000, 1 << 63) == errno.EOVERFLOW
    env.allow(ioas_id, [(0x1000, 0x2FFF)])
    assert env.map_err(ioas_id, 0x1000, 0x4000) == errno.ENOSPC
    # A window of exactly the length fits; one byte less does not.
    assert env.map(ioas_id, 0x1000, 0x2000) == 0x1000
    env.allow(ioas_id, [])
    env.huge(ioas_id, False)
    # Wanted alignment 2 KiB (from the VA) < iova_alignment 4 KiB.
    assert env.map_err(ioas_id, 0x7F0000000800, 0x1000) == errno.EINVAL
    # Allowed ranges all below PAGE_SIZE: nothing can be allocated.
    env.unmap(ioas_id, 0, U64_MAX)
    env.allow(ioas_id, [(0, 0xFFF)])
    assert env.map_err(ioas_id, 0x1000, 0x1000) == errno.ENOSPC
    assert not env.obj(ioas_id).areas


def test_adjacent_allowed_ranges_form_one_window(env):
    ioas_id = env.ioas()
    env.allow(ioas_id, [(0x1000, 0x1FFF), (0x2000, 0x2FFF)])
    assert env.map(ioas_id, 0x1000, 0x2000) == 0x1000
    env.allow(ioas_id, [(0x4000, 0x4FFF), (0x5001, 0x6FFF)])
    assert env.map_err(ioas_id, 0x1000, 0x2000) == errno.ENOSPC


def test_auto_iova_refuses_a_window_whose_aligned_start_is_its_last_byte(env):
    ioas_id = env.ioas()
    env.allow(ioas_id, [(0x1000, 0x1001)])
    # Offset 1 puts the start on 0x1001 == last: refused even for one byte.
    assert env.map_err(ioas_id, 0x5001, 1) == errno.ENOSPC
    assert env.map(ioas_id, 0x5000, 1) == 0x1000
    # Left: the one-byte hole 0x1001, which no request can use.
    assert env.map_err(ioas_id, 0x5001, 1) == errno.ENOSPC
    env.allow(ioas_id, [(0x1000, 0x2000)])
    env.map(ioas_id, 0x7000, 0x1000, iova=0x1002)
    # The one-byte hole again, and the next hole starts past the window.
    assert env.map_err(ioas_id, 0x5001, 1) == errno.ENOSPC


def test_auto_iova_never_uses_the_last_page(env):
    ioas_id = env.ioas()
    env.map(ioas_id, 0x1000, U64_MAX - 2 * PAGE - 0xFFF, iova=0x1000)
    # Left free: [0, 0xfff] and [U64_MAX-0x2fff+1 .. U64_MAX]; the search stops at ULONG_MAX-PAGE_SIZE.
    free_top = U64_MAX - 2 * PAGE - 0xFFF + 0x1000
    assert env.obj(ioas_id).area_at(free_top - 1) is not None
    assert env.map(ioas_id, 0x1000, PAGE) == free_top
    assert env.map_err(ioas_id, 0x1000, PAGE) == errno.ENOSPC


def test_lazy_map_accepts_unmapped_memory(env):
    ioas_id = env.ioas()
    va = hole_va()
    assert env.map(ioas_id, va, PAGE, iova=1 << 31) == 1 << 31
    assert env.obj(ioas_id).area_at(1 << 31).pinned is False


def test_map_with_domain_pins_and_maps(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    dom = FakeDomain()
    ioas.add_domain(dom)
    iova = env.map(ioas_id, buf, 2 * PAGE, flags=R)
    assert dom.maps == {iova: (buf, 2 * PAGE, PROT_READ, True)}
    assert ioas.area_at(iova).pinned
    env.map(ioas_id, buf, PAGE, iova=0x100000, flags=R | W)
    assert dom.maps[0x100000] == (buf, PAGE, PROT_READ | PROT_WRITE, True)


def test_map_with_domain_efault_leaves_nothing(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    dom = FakeDomain()
    ioas.add_domain(dom)
    before = state(ioas)
    assert env.map_err(ioas_id, hole_va(), PAGE) == errno.EFAULT
    assert env.map_err(ioas_id, hole_va(), PAGE, iova=0x10000) == errno.EFAULT
    ro = mmap(2 * PAGE, PROT_R)
    try:
        # Writable pages are pinned for writing: a read-only VMA faults...
        assert env.map_err(ioas_id, ro, 2 * PAGE, flags=R | W) == errno.EFAULT
        # ...half-mapped memory too...
        half = mmap(2 * PAGE)
        munmap(half + PAGE, PAGE)
        assert env.map_err(ioas_id, half, 2 * PAGE, flags=R) == errno.EFAULT
        munmap(half, PAGE)
        assert state(ioas) == before and dom.maps == {} and len(env.ctx.owners) == 0
        # ...while a read-only mapping of it is fine.
        iova = env.map(ioas_id, ro, 2 * PAGE, flags=R)
        assert dom.maps == {iova: (ro, 2 * PAGE, PROT_READ, True)}
    finally:
        munmap(ro, 2 * PAGE)


def test_map_domain_failure_unmaps_from_earlier_domains(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    good, bad = FakeDomain(), FakeDomain(fail_at=1)
    ioas.add_domain(good)
    ioas.add_domain(bad)
    assert env.map_err(ioas_id, buf, PAGE) == errno.ENOMEM
    assert good.maps == {} and bad.maps == {} and not ioas.areas and len(env.ctx.owners) == 0


# == IOMMU_IOAS_UNMAP =================================================================================
def test_unmap_checks_the_id_first(env):
    ioas_id = env.ioas()
    assert env.unmap_err(99, 0, 0) == errno.ENOENT
    assert env.unmap_err(99, U64_MAX, U64_MAX) == errno.ENOENT
    assert env.unmap_err(ioas_id, U64_MAX, 1) == errno.EOVERFLOW
    assert env.unmap_err(ioas_id, 1, U64_MAX) == errno.EOVERFLOW
    assert env.unmap_err(ioas_id, 0x1000, 0) == errno.EINVAL
    assert env.unmap_err(ioas_id, U64_MAX - 1, 2 * PAGE) == errno.EOVERFLOW
    assert env.unmap_err(ioas_id, 0x1000, PAGE) == errno.ENOENT


def test_unmap_all(env, buf):
    ioas_id = env.ioas()
    c = new("iommu_ioas_unmap", ioas_id=ioas_id, iova=0, length=U64_MAX)
    env.call(uapi.IOMMU_IOAS_UNMAP, c)
    assert raw(c) == struct.pack("<IIQQ", 24, ioas_id, 0, 0)
    env.map(ioas_id, buf, PAGE)
    env.map(ioas_id, buf, 3 * PAGE, iova=1 << 40)
    assert env.unmap(ioas_id, 0, U64_MAX) == 4 * PAGE
    assert not env.obj(ioas_id).areas and len(env.ctx.owners) == 0
    assert list(env.obj(ioas_id).free) == [(0, U64_MAX)]


def test_unmap_needs_full_containment(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    env.map(ioas_id, buf, 2 * PAGE, iova=0x10000)
    env.map(ioas_id, buf, PAGE, iova=0x12000)
    assert env.unmap_err(ioas_id, 0x10000, PAGE) == errno.ENOENT
    assert env.unmap_err(ioas_id, 0x11000, 2 * PAGE) == errno.ENOENT
    assert env.unmap_err(ioas_id, 0x20000, PAGE) == errno.ENOENT
    assert len(ioas.areas) == 2
    c = new("iommu_ioas_unmap", ioas_id=ioas_id, iova=0xF000, length=0x10000)
    env.call(uapi.IOMMU_IOAS_UNMAP, c)
    assert raw(c) == struct.pack("<IIQQ", 24, ioas_id, 0xF000, 3 * PAGE)
    assert not ioas.areas


def test_unmap_error_keeps_what_was_already_unmapped(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    dom = FakeDomain()
    ioas.add_domain(dom)
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    env.map(ioas_id, buf, 2 * PAGE, iova=0x12000)
    c = new("iommu_ioas_unmap", ioas_id=ioas_id, iova=0x10000, length=0x3000)
    assert env.err(uapi.IOMMU_IOAS_UNMAP, c) == errno.ENOENT
    assert c.length == 0x3000  # not written back
    assert ioas.area_at(0x10000) is None and ioas.area_at(0x12000) is not None
    assert list(dom.maps) == [0x12000]


def test_unmap_of_a_locked_area_is_ebusy(env, buf):
    ioas_id = env.ioas()
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    env.obj(ioas_id).area_at(0x10000).locks += 1
    assert env.unmap_err(ioas_id, 0, U64_MAX) == errno.EBUSY
    env.obj(ioas_id).area_at(0x10000).locks -= 1
    assert env.unmap(ioas_id, 0x10000, PAGE) == PAGE


# == IOMMU_IOAS_COPY ===================================================================================
def test_copy_argument_checks_in_order(env, buf):
    src = env.ioas()
    dst = env.ioas()
    env.map(src, buf, 2 * PAGE, iova=0x10000)
    assert env.copy_err(dst, src, 0x10000, PAGE, flags=R | 0x10) == errno.EOPNOTSUPP
    assert env.copy_err(99, 99, U64_MAX, PAGE, flags=0) == errno.EOVERFLOW
    assert env.copy_err(99, 99, 0x10000, U64_MAX, flags=0) == errno.EOVERFLOW
    c = new("iommu_ioas_copy", flags=0, dst_ioas_id=99, src_ioas_id=99, length=PAGE,
            dst_iova=U64_MAX, src_iova=0)
    assert env.err(uapi.IOMMU_IOAS_COPY, c) == errno.EOVERFLOW
    assert env.copy_err(99, 99, 0x10000, PAGE, flags=FIXED) == errno.EINVAL
    assert env.copy_err(dst, 99, 0x10000, PAGE) == errno.ENOENT
    # The source range is resolved before the destination is looked up.
    assert env.copy_err(99, src, 0x10000, 0) == errno.EINVAL
    assert env.copy_err(99, src, U64_MAX - 1, 2 * PAGE) == errno.EOVERFLOW
    assert env.copy_err(dst, src, 0x11000, 2 * PAGE) == errno.ENOENT
    assert env.copy_err(dst, src, 0xF000, 2 * PAGE) == errno.ENOENT
    assert env.copy_err(99, src, 0x10000, PAGE) == errno.ENOENT
    assert not env.obj(dst).areas


def test_copy_spans_contiguous_areas_and_shares_owner(env, buf):
    src = env.ioas()
    dst = env.ioas()
    env.map(src, buf, 2 * PAGE, iova=0x10000)
    env.map(src, buf + 8 * PAGE, 2 * PAGE, iova=0x12000)
    owner = env.obj(src).area_at(0x10000).owner
    assert owner.refs == 2
    got = env.copy(dst, src, 0x11800, 2 * PAGE, dst_iova=0x40800)
    assert got == 0x40800
    areas = [(a.iova, a.length, a.user_va) for a in env.obj(dst).areas.values()]
    assert areas == [(0x40800, 0x800, buf + 0x1800), (0x41000, 0x1800, buf + 8 * PAGE)]
    assert all(a.owner is owner for a in env.obj(dst).areas.values()) and owner.refs == 4
    # A hole between two areas stops a copy.
    env.map(src, buf, PAGE, iova=0x15000)
    assert env.copy_err(dst, src, 0x13000, 3 * PAGE) == errno.ENOENT
    # Unmapping the source leaves the copy standing.
    env.unmap(src, 0, U64_MAX)
    assert owner.refs == 2 and len(env.obj(dst).areas) == 2


def test_copy_auto_iova_follows_the_first_source_byte(env):
    src = env.ioas()
    dst = env.ioas()
    env.map(src, 0x7F0000200000, 0x400000, iova=0x1000000)
    # First source byte at VA 0x7f0000300000 (1 MiB aligned), 1 MiB long.
    assert env.copy(dst, src, 0x1100000, MB) == 0x100000


def test_copy_writeable_from_read_only_memory_is_eperm(env, buf):
    src = env.ioas()
    dst = env.ioas()
    env.map(src, buf, PAGE, iova=0x10000, flags=R)
    env.map(src, buf, PAGE, iova=0x11000, flags=R | W)
    assert env.copy_err(dst, src, 0x10000, 2 * PAGE, flags=R | W) == errno.EPERM
    assert not env.obj(dst).areas
    assert env.copy(dst, src, 0x11000, PAGE, dst_iova=0x10000, flags=W) == 0x10000
    assert env.copy(dst, src, 0x10000, 2 * PAGE, dst_iova=0x20000, flags=R) == 0x20000
    # A read-only copy of writable memory can be copied writable again: the
    # rule looks at how the memory was registered, not at the copy's prot.
    assert env.copy(dst, dst, 0x21000, PAGE, dst_iova=0x30000, flags=W) == 0x30000
    assert env.copy_err(dst, dst, 0x20000, PAGE, dst_iova=0x31000, flags=W) == errno.EPERM
    got = [(a.iova, a.prot, a.writeable_source) for a in env.obj(dst).areas.values()]
    assert got == [(0x10000, PROT_WRITE, True), (0x20000, PROT_READ, False),
                   (0x21000, PROT_READ, True), (0x30000, PROT_WRITE, True)]


def test_copy_rules_are_those_of_the_destination(env, buf):
    src = env.ioas()
    dst = env.ioas()
    env.map(src, buf + 0x800, 0x2000, iova=0x10800)
    env.huge(dst, False)
    assert env.copy_err(dst, src, 0x10800, 0x1800) == errno.EINVAL          # length % 4096
    assert env.copy_err(dst, src, 0x10800, 0x1000, dst_iova=0x20000) == errno.EINVAL  # page offset 0x800
    assert env.copy_err(dst, src, 0x11000, 0x1000, dst_iova=0x20800) == errno.EINVAL  # misaligned IOVA
    assert env.copy(dst, src, 0x11000, 0x1000, dst_iova=0x20000) == 0x20000
    assert env.copy_err(dst, src, 0x11000, 0x1000, dst_iova=0x20000) == errno.EEXIST


def test_copy_pins_into_destination_domains(env, buf):
    src = env.ioas()
    dst = env.ioas()
    dom = FakeDomain()
    env.obj(dst).add_domain(dom)
    lazy = hole_va()
    env.map(src, lazy, PAGE, iova=0x10000)
    env.map(src, buf, PAGE, iova=0x11000)
    assert env.copy_err(dst, src, 0x10000, 2 * PAGE) == errno.EFAULT
    assert dom.maps == {} and not env.obj(dst).areas
    assert env.copy(dst, src, 0x11000, PAGE, dst_iova=0x50000) == 0x50000
    assert dom.maps == {0x50000: (buf, PAGE, PROT_READ | PROT_WRITE, True)}


def test_copy_of_pinned_memory_needs_no_second_check(env):
    src = env.ioas()
    dst = env.ioas()
    env.obj(src).add_domain(FakeDomain())
    env.obj(dst).add_domain(FakeDomain())
    a = mmap(PAGE)
    env.map(src, a, PAGE, iova=0x10000)
    munmap(a, PAGE)
    # The pages are pinned by the source's domain: the copy reuses them.
    assert env.copy(dst, src, 0x10000, PAGE) == 0x1000


# == IOMMU_OPTION ======================================================================================
class Recorder(FrameArg):
    def __init__(self, data):
        super().__init__(data)
        self.writes = []

    def write(self, off, data):
        self.writes.append((off, len(data)))
        super().write(off, data)


def test_option_writes_back_only_val64(env):
    ioas_id = env.ioas()
    arg = Recorder(struct.pack("<IIHHIQ", 24, uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, 0, ioas_id, 7))
    env.call(uapi.IOMMU_OPTION, arg)
    assert arg.writes == [(16, 8)]
    assert bytes(arg.buf) == struct.pack("<IIHHIQ", 24, 1, 1, 0, ioas_id, 1)
    arg = Recorder(struct.pack("<IIHHIQ", 24, uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, 0, ioas_id, 3))
    assert env.err(uapi.IOMMU_OPTION, arg) == errno.EINVAL
    assert arg.writes == []


def test_option_generic_errors(env):
    assert env.option_err(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET, reserved=1) == errno.EOPNOTSUPP
    assert env.option_err(2, uapi.IOMMU_OPTION_OP_GET) == errno.EOPNOTSUPP
    assert env.option_err(uapi.IOMMU_OPTION_HUGE_PAGES, 7, object_id=99) == errno.ENOENT
    ioas_id = env.ioas()
    assert env.option_err(uapi.IOMMU_OPTION_HUGE_PAGES, 7, object_id=ioas_id) == errno.EOPNOTSUPP


def test_rlimit_mode(env):
    R_MODE, GET, SET = uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET, uapi.IOMMU_OPTION_OP_SET
    assert env.option_err(R_MODE, GET, object_id=1) == errno.EOPNOTSUPP
    assert env.option(R_MODE, GET, val64=9) == 0
    assert env.option_err(R_MODE, SET, val64=2) == errno.EINVAL
    assert env.option(R_MODE, SET, val64=1) == 1
    assert env.option(R_MODE, GET) == 1 and env.ctx.rlimit_mm
    assert env.option_err(R_MODE, 5) == errno.EOPNOTSUPP
    env.ioas()
    assert env.option_err(R_MODE, SET, val64=2) == errno.EBUSY
    assert env.option(R_MODE, GET) == 1


def test_rlimit_mode_set_needs_privilege_first():
    e = Env(uid=1000)
    try:
        R_MODE = uapi.IOMMU_OPTION_RLIMIT_MODE
        e.ioas()
        assert e.option_err(R_MODE, uapi.IOMMU_OPTION_OP_SET, val64=7) == errno.EPERM
        assert e.option(R_MODE, uapi.IOMMU_OPTION_OP_GET) == 0
    finally:
        e.ctx.close()


def test_rlimit_mode_ebusy_counts_pending_ids(env):
    env.ctx.add(Holder(env.ctx))
    try:
        assert env.option_err(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_SET) == errno.EBUSY
    finally:
        env.ctx.rollback()


def test_huge_pages(env, buf):
    HP, GET = uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    assert env.option(HP, GET, ioas_id) == 1
    env.huge(ioas_id, False)
    assert env.option(HP, GET, ioas_id) == 0 and env.ranges(ioas_id)[1] == PAGE
    env.huge(ioas_id, False)  # already disabled: nothing to do
    env.huge(ioas_id, True)
    assert env.option(HP, GET, ioas_id) == 1 and env.ranges(ioas_id)[1] == 1
    assert env.option_err(HP, uapi.IOMMU_OPTION_OP_SET, ioas_id, val64=2) == errno.EINVAL
    # A misaligned area (allowed at alignment 1) blocks disabling.
    env.map(ioas_id, buf, 0x800, iova=0x10000)
    assert env.option_err(HP, uapi.IOMMU_OPTION_OP_SET, ioas_id, val64=0) == errno.EADDRINUSE
    assert not ioas.disable_large_pages and ioas.iova_alignment == 1
    env.unmap(ioas_id, 0, U64_MAX)
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    env.huge(ioas_id, False)
    env.huge(ioas_id, True)
    # With a domain and an area it is refused; with a domain alone it works.
    dom = FakeDomain(2048)
    ioas.add_domain(dom)
    assert dom.maps[0x10000][3] is True
    assert env.option_err(HP, uapi.IOMMU_OPTION_OP_SET, ioas_id, val64=0) == errno.EINVAL
    env.unmap(ioas_id, 0, U64_MAX)
    assert env.ranges(ioas_id)[1] == 2048
    env.huge(ioas_id, False)
    assert env.ranges(ioas_id)[1] == PAGE
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    assert dom.maps[0x10000] == (buf, PAGE, PROT_READ | PROT_WRITE, False)
    env.huge(ioas_id, True)
    assert env.ranges(ioas_id)[1] == 2048


# == domains ==============================================================================================
def test_add_domain_alignment_rules(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(FakeDomain(8192))
    assert ei.value.errno == errno.EINVAL
    env.map(ioas_id, buf, 0x800, iova=0x10000)
    before = state(ioas)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(FakeDomain(PAGE))
    assert ei.value.errno == errno.EADDRINUSE
    assert state(ioas) == before
    dom = FakeDomain(2048)
    ioas.add_domain(dom)
    assert ioas.iova_alignment == 2048 and dom.maps == {0x10000: (buf, 0x800, 3, True)}
    assert ioas.area_at(0x10000).pinned
    ioas.remove_domain(dom)
    assert ioas.iova_alignment == 1 and dom.maps == {} and not ioas.area_at(0x10000).pinned


def test_add_domain_page_offset_must_be_aligned(env, buf):
    ioas_id = env.ioas()
    env.map(ioas_id, buf + 0x800, PAGE, iova=0x10000)
    with pytest.raises(UapiError) as ei:
        env.obj(ioas_id).add_domain(FakeDomain(PAGE))
    assert ei.value.errno == errno.EADDRINUSE


def test_add_domain_efault_on_lazy_mapping_changes_nothing(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    env.map(ioas_id, hole_va(), PAGE, iova=0x20000)
    before = state(ioas)
    dom = FakeDomain(2048, aperture=(0, (1 << 48) - 1))
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(dom)
    assert ei.value.errno == errno.EFAULT
    assert state(ioas) == before and dom.maps == {} and env.ranges(ioas_id) == ([(0, U64_MAX)], 1)
    env.unmap(ioas_id, 0x20000, PAGE)
    ioas.add_domain(dom)
    assert env.ranges(ioas_id) == ([(0, (1 << 48) - 1)], 2048)


def test_add_domain_aperture_must_hold_areas(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    env.map(ioas_id, buf, PAGE, iova=1 << 40)
    before = state(ioas)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(FakeDomain(PAGE, aperture=(0, (1 << 39) - 1)))
    assert ei.value.errno == errno.EADDRINUSE
    assert state(ioas) == before
    env.allow(ioas_id, [(1 << 24, 1 << 25)])
    env.unmap(ioas_id, 0, U64_MAX)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(FakeDomain(PAGE, aperture=(1 << 25, U64_MAX)))
    assert ei.value.errno == errno.EADDRINUSE


def test_add_domain_map_failure_unmaps(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    for i in range(3):
        env.map(ioas_id, buf, PAGE, iova=0x10000 * (i + 1))
    dom = FakeDomain(PAGE, aperture=(0, 1 << 30), fail_at=3)
    before = state(ioas)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(dom)
    assert ei.value.errno == errno.ENOMEM
    assert dom.maps == {} and state(ioas) == before


def test_areas_become_lazy_again_when_the_last_domain_leaves(env):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    a = mmap(PAGE)
    d1, d2 = FakeDomain(), FakeDomain()
    ioas.add_domain(d1)
    env.map(ioas_id, a, PAGE, iova=0x10000)
    munmap(a, PAGE)
    ioas.add_domain(d2)  # pinned already: no new check
    assert 0x10000 in d2.maps
    ioas.remove_domain(d1)
    ioas.remove_domain(d2)
    with pytest.raises(UapiError) as ei:
        ioas.add_domain(d1)
    assert ei.value.errno == errno.EFAULT


def test_reserved_ranges_by_key(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    env.map(ioas_id, buf, PAGE, iova=0x10000)
    with pytest.raises(UapiError) as ei:
        ioas.add_reserved("dev", [(0, 0xFFF), (0x10FFF, 0x11000)])
    assert ei.value.errno == errno.EADDRINUSE
    assert "dev" not in ioas.reserved
    ioas.add_reserved("dev", [(0, 0xFFFF), (0x11000, 0x1FFFF)])
    ioas.add_reserved("msi", [(0x18000, 0x2FFFF)])
    assert env.ranges(ioas_id)[0] == [(0x10000, 0x10FFF), (0x30000, U64_MAX)]
    assert env.map(ioas_id, buf, PAGE) == 0x30000
    ioas.remove_reserved("dev")
    assert env.ranges(ioas_id)[0] == [(0, 0x17FFF), (0x30000, U64_MAX)]
    assert env.map(ioas_id, buf, PAGE) == 0x1000
    ioas.remove_reserved("msi")
    ioas.remove_reserved("nobody")
    assert env.ranges(ioas_id)[0] == [(0, U64_MAX)]
    assert env.map(ioas_id, buf, PAGE, iova=0x20000) == 0x20000


def test_destroy_releases_owners_and_domain_mappings(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    dom = FakeDomain()
    ioas.add_domain(dom)
    env.map(ioas_id, buf, PAGE)
    env.map(ioas_id, buf, PAGE)
    ioas.destroy()
    assert dom.maps == {} and not ioas.areas and not ioas.domains and len(env.ctx.owners) == 0


def test_areas_in_and_area_at(env, buf):
    ioas_id = env.ioas()
    ioas = env.obj(ioas_id)
    for iova in (0x10000, 0x12000, 0x20000):
        env.map(ioas_id, buf, PAGE, iova=iova)
    assert [a.iova for a in ioas.areas_in(0x10FFF, 0x20000)] == [0x10000, 0x12000, 0x20000]
    assert [a.iova for a in ioas.areas_in(0x11000, 0x11FFF)] == []
    assert [a.iova for a in ioas.areas_in(0x12FFF, 0x1FFFF)] == [0x12000]
    assert ioas.area_at(0x12FFF).iova == 0x12000 and ioas.area_at(0x13000) is None


def test_close_destroys_ioas_after_its_users(env, buf):
    ioas_id = env.ioas()
    env.map(ioas_id, buf, PAGE)
    holder = Holder(env.ctx, env.obj(ioas_id))
    env.ctx.add_published(holder)
    env.ctx.close()
    assert env.ctx.objects == {} and len(env.ctx.owners) == 0
