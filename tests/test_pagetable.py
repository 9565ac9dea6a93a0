"""Tests of the C I/O page table (cext/pagetable.c) through its wrapper.

Unit tests pin exact addresses, leaf sizes, errnos and counters. The
hypothesis state machines hold the C table, after every step, against
(a) the pure-Python reference walker reading the same memory (cext.refwalk)
and (b) a pure-Python dict model of pages and leaves written from the spec.
"""
import errno
import gc
import random

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cext import refwalk
from cext._native import ffi, lib
from cext.pagetable import (PTE_ACCESSED, PTE_DIRTY, PTE_LEAF, PTE_PRESENT, PTE_READ,
                            PTE_WRITE, READ, WRITE, IOPageFault, PageTable, live_tables)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RW = READ | WRITE
UVA = 0x7F00_0000_0000          # an output address aligned to 1 GiB


def errno_of(excinfo):
    return excinfo.value.errno


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("granule,ias,levels", [
    (4096, 48, 4), (4096, 57, 5), (4096, 39, 3), (2048, 31, 3), (4096, 21, 1)])
def test_levels_from_geometry(granule, ias, levels):
    pt = PageTable(granule=granule, ias_bits=ias, max_leaf_level=0)
    assert pt.levels == levels
    st_ = pt.stats()
    assert st_["tables"] == 1 and st_["leaves"] == 0 and st_["mapped_bytes"] == 0
    assert st_["table_bytes"] == 64 + 8 * 512


@pytest.mark.parametrize("kw", [
    dict(granule=3000), dict(granule=32), dict(ias_bits=12), dict(ias_bits=64),
    dict(max_leaf_level=4), dict(bits_per_level=0), dict(bits_per_level=17),
    dict(granule=4096, ias_bits=63, bits_per_level=1),   # 51 levels
])
def test_bad_geometry_is_einval(kw):
    with pytest.raises(OSError) as ei:
        PageTable(**kw)
    assert errno_of(ei) == errno.EINVAL


def test_refwalk_constants_match_c():
    assert (refwalk.PRESENT, refwalk.READ, refwalk.WRITE, refwalk.ACCESSED, refwalk.DIRTY,
            refwalk.LEAF) == (lib.IOFS_PTE_PRESENT, lib.IOFS_PTE_READ, lib.IOFS_PTE_WRITE,
                              lib.IOFS_PTE_ACCESSED, lib.IOFS_PTE_DIRTY, lib.IOFS_PTE_LEAF)
    assert refwalk.HDR_BYTES == lib.IOFS_PT_HDR_BYTES == ffi.sizeof("struct iofs_pt_hdr")
    assert (READ, WRITE) == (1, 2)


# ---------------------------------------------------------------- map / translate

def test_translate_gives_the_byte_address():
    pt = PageTable()
    pt.map(0x10000, UVA + 0x5000, 3 * 4096, RW)
    assert pt.translate(0x10000) == (UVA + 0x5000, 4096)
    assert pt.translate(0x11abc) == (UVA + 0x6abc, 4096)
    assert pt.translate(0x12fff, WRITE) == (UVA + 0x7fff, 4096)
    for iova in (0xffff, 0x13000, 0):
        with pytest.raises(IOPageFault) as ei:
            pt.translate(iova)
        assert errno_of(ei) == errno.EFAULT and ei.value.iova == iova
    assert refwalk.walk(pt, 0x11abc) == (UVA + 0x6abc, RW, PTE_PRESENT | PTE_READ | PTE_WRITE
                                         | PTE_ACCESSED, 4096)
    assert refwalk.walk(pt, 0x13000) is None


def test_huge_leaves_used_where_aligned():
    pt = PageTable(max_leaf_level=2)
    # 1 GiB + 2 MiB + 4 KiB, iova and addr both 1 GiB aligned.
    pt.map(GiB, UVA, GiB + 2 * MiB + 4 * KiB, RW)
    assert pt.stats()["leaves_at"] == [1, 1, 1, 0]
    assert pt.translate(GiB + 12345) == (UVA + 12345, GiB)
    assert pt.translate(2 * GiB + MiB) == (UVA + GiB + MiB, 2 * MiB)
    assert pt.translate(2 * GiB + 2 * MiB + 7) == (UVA + GiB + 2 * MiB + 7, 4 * KiB)
    leaves = refwalk.leaves(pt)
    assert [(i, s) for i, s, _, _ in leaves] == [(GiB, GiB), (2 * GiB, 2 * MiB),
                                                 (2 * GiB + 2 * MiB, 4 * KiB)]
    assert all(f & PTE_LEAF for _, s, _, f in leaves if s > 4096)
    assert not leaves[-1][3] & PTE_LEAF


def test_huge_leaves_need_addr_alignment_too():
    pt = PageTable()
    pt.map(GiB, UVA + 4096, GiB, RW)          # iova aligned, addr only 4 KiB aligned
    assert pt.stats()["leaves_at"] == [GiB // 4096, 0, 0, 0]
    assert pt.stats()["tables"] == 1 + 1 + 1 + 512
    pt.unmap(GiB, GiB)
    pt.map(GiB, UVA + 2 * MiB, GiB, RW)       # 2 MiB aligned: 2 MiB leaves only
    assert pt.stats()["leaves_at"] == [0, 512, 0, 0]


def test_huge_false_and_max_leaf_level():
    pt = PageTable()
    pt.map(0, UVA, 4 * MiB, RW, huge=False)
    assert pt.stats()["leaves_at"] == [1024, 0, 0, 0]
    pt1 = PageTable(max_leaf_level=1)
    pt1.map(GiB, UVA, GiB, RW)
    assert pt1.stats()["leaves_at"] == [0, 512, 0, 0]
    pt0 = PageTable(max_leaf_level=0)
    pt0.map(0, UVA, 2 * MiB, RW)
    assert pt0.stats()["leaves_at"] == [512, 0, 0, 0]


def test_mixed_run_decomposition():
    pt = PageTable()
    # Starts 8 KiB below a 2 MiB boundary, addr congruent: 2 pages, 2 big, 3 pages.
    iova = 2 * MiB - 8 * KiB
    pt.map(iova, UVA + iova, 8 * KiB + 4 * MiB + 12 * KiB, READ)
    sizes = [s for _, s, _, _ in refwalk.leaves(pt)]
    assert sizes == [4096, 4096, 2 * MiB, 2 * MiB, 4096, 4096, 4096]
    assert pt.stats()["mapped_bytes"] == 8 * KiB + 4 * MiB + 12 * KiB


def test_errnos_of_map():
    pt = PageTable()
    cases = [
        ((0x800, UVA, 4096, RW), errno.EINVAL),
        ((0, UVA + 0x800, 4096, RW), errno.EINVAL),
        ((0, UVA, 100, RW), errno.EINVAL),
        ((0, UVA, 4096, 4), errno.EINVAL),
        ((-4096, UVA, 4096, RW), errno.EINVAL),
        ((1 << 48, UVA, 4096, RW), errno.ERANGE),
        (((1 << 48) - 4096, UVA, 8192, RW), errno.ERANGE),
        ((0, (1 << 64) - 4096, 8192, RW), errno.EOVERFLOW),
    ]
    for args, err in cases:
        with pytest.raises(OSError) as ei:
            pt.map(*args)
        assert errno_of(ei) == err, args
    pt.map(0, UVA, 0, RW)                               # length 0: nothing
    pt.map((1 << 48) - 4096, (1 << 64) - 4096, 4096, RW)  # both at the very top
    assert pt.translate((1 << 48) - 1) == ((1 << 64) - 1, 4096)
    assert pt.stats()["leaves"] == 1


def test_eexist_leaves_table_unchanged():
    pt = PageTable()
    pt.map(GiB, UVA, GiB, RW)                 # one 1 GiB leaf
    pt.map(4 * GiB + 8 * KiB, UVA, 4096, READ)
    before = (refwalk.leaves(pt), pt.stats())
    # Each overlaps in a different way: the tail of a range, a huge leaf
    # only partly covered, a single page inside a range that is mostly free.
    for iova, length in [(GiB - 2 * MiB, 4 * MiB), (2 * GiB - 4096, 8192),
                         (4 * GiB, 3 * 4096), (4 * GiB + 8 * KiB, 4096), (0, 8 * GiB)]:
        with pytest.raises(OSError) as ei:
            pt.map(iova, UVA + 5 * GiB, length, RW)
        assert errno_of(ei) == errno.EEXIST
        assert (refwalk.leaves(pt), pt.stats()) == before
    assert refwalk.check(pt) == before[1]["tables"]


def test_five_levels_for_57_bits():
    pt = PageTable(ias_bits=57)
    assert pt.levels == 5
    iova = (1 << 56) + (3 << 39) + 0x1234000
    pt.map(iova, UVA + 0x3000, 2 * 4096, RW)
    assert pt.translate(iova + 0x1abc, WRITE) == (UVA + 0x4abc, 4096)
    assert refwalk.walk(pt, iova + 0x10) == (UVA + 0x3010, RW, PTE_PRESENT | PTE_READ
                                            | PTE_WRITE, 4096)
    assert pt.stats()["tables"] == 5
    assert refwalk.check(pt) == 5
    with pytest.raises(OSError) as ei:
        PageTable(ias_bits=48).map(iova, UVA, 4096, RW)
    assert errno_of(ei) == errno.ERANGE
    with pytest.raises(IOPageFault) as ei:
        pt.translate(1 << 57)
    assert errno_of(ei) == errno.EFAULT


def test_mock_2k_granule_with_1m_leaves():
    pt = PageTable(granule=2048, ias_bits=31, max_leaf_level=1)
    assert pt.levels == 3
    base = 1 << 24                                   # the mock aperture start
    pt.map(base, UVA, 2 * MiB + 2048, RW)
    assert pt.stats()["leaves_at"] == [1, 2, 0]
    assert pt.translate(base + MiB + 5) == (UVA + MiB + 5, MiB)
    assert pt.translate(base + 2 * MiB + 2047) == (UVA + 2 * MiB + 2047, 2048)
    pt.map(base + 4 * MiB + 2048, UVA + 2048, MiB, READ)  # misaligned: 2 KiB pages
    assert pt.stats()["leaves_at"] == [1 + 512, 2, 0]
    with pytest.raises(OSError) as ei:
        pt.map(base + 8 * MiB + 1024, UVA, 2048, RW)
    assert errno_of(ei) == errno.EINVAL
    with pytest.raises(OSError) as ei:
        pt.map(1 << 31, UVA, 2048, RW)
    assert errno_of(ei) == errno.ERANGE
    # Partial unmap of a 1 MiB leaf splits it into 2 KiB pages.
    assert pt.unmap(base + 2048, 2048) == 2048
    assert pt.stats()["leaves_at"] == [1 + 512 + 511, 1, 0]
    assert pt.translate(base + 4096 + 3) == (UVA + 4096 + 3, 2048)


# ---------------------------------------------------------------- unmap

def test_split_on_partial_unmap():
    pt = PageTable()
    pt.map(GiB, UVA, GiB, RW)
    pt.translate(GiB + 5 * MiB, WRITE)              # dirty the whole 1 GiB leaf
    assert pt.unmap(GiB + 3 * MiB + 4096, 4096) == 4096
    assert pt.stats()["leaves_at"] == [511, 511, 0, 0]
    assert pt.stats()["tables"] == 1 + 1 + 1 + 1
    assert pt.stats()["mapped_bytes"] == GiB - 4096
    with pytest.raises(IOPageFault) as ei:
        pt.translate(GiB + 3 * MiB + 4096 + 100)
    assert ei.value.iova == GiB + 3 * MiB + 4096 + 100
    assert pt.translate(GiB + 3 * MiB, access=0) == (UVA + 3 * MiB, 4096)
    assert pt.translate(GiB + 3 * MiB + 8192, access=0) == (UVA + 3 * MiB + 8192, 4096)
    assert pt.translate(GiB + 9 * MiB + 1, access=0) == (UVA + 9 * MiB + 1, 2 * MiB)
    # The pieces inherit the leaf's flags, dirty bit included.
    want = PTE_PRESENT | PTE_READ | PTE_WRITE | PTE_ACCESSED | PTE_DIRTY
    assert pt.get_ad(GiB + 3 * MiB) == want
    assert pt.get_ad(GiB + 100 * MiB) == want | PTE_LEAF
    assert refwalk.check(pt) == 4


def test_unmap_both_ends_inside_one_huge_leaf():
    pt = PageTable()
    pt.map(0, UVA, GiB, READ)
    assert pt.unmap(2 * MiB - 8192, 2 * MiB + 16384) == 2 * MiB + 16384
    leaves = [(i, s) for i, s, _, _ in refwalk.leaves(pt)]
    assert leaves[:511] == [(k * 4096, 4096) for k in range(510)] + [(4 * MiB + 8192, 4096)]
    assert pt.stats()["leaves_at"] == [510 + 510, 509, 0, 0]
    assert pt.stats()["mapped_bytes"] == GiB - (2 * MiB + 16384)
    assert pt.translate(2 * MiB - 8193, 0) == (UVA + 2 * MiB - 8193, 4096)
    assert pt.translate(4 * MiB + 8192, 0) == (UVA + 4 * MiB + 8192, 4096)
    assert pt.translate(6 * MiB, 0) == (UVA + 6 * MiB, 2 * MiB)


def test_unmap_counts_only_mapped_bytes_and_errnos():
    pt = PageTable()
    pt.map(0x100000, UVA, 0x3000, RW)
    pt.map(0x200000, UVA, 0x1000, RW)
    assert pt.unmap(0, 0x400000) == 0x4000
    assert pt.unmap(0, 0x400000) == 0
    assert pt.unmap(0x5000, 0) == 0
    for args, err in [((0x800, 4096), errno.EINVAL), ((0, 100), errno.EINVAL),
                      ((1 << 48, 4096), errno.ERANGE), ((0, (1 << 48) + 4096), errno.ERANGE)]:
        with pytest.raises(OSError) as ei:
            pt.unmap(*args)
        assert errno_of(ei) == err


def test_tables_freed_after_unmap():
    gc.collect()
    base = live_tables()
    pt = PageTable()
    empty = pt.stats()
    for k in range(40):
        pt.map(k * (1 << 39) // 4 + k * 3 * MiB, UVA + k * 4096, 5 * 4096, RW)
    pt.map(GiB * 7, UVA, 4 * MiB, RW, huge=False)
    assert pt.stats()["tables"] > 40
    assert live_tables() == base + pt.stats()["tables"]
    for k in range(40):
        assert pt.unmap(k * (1 << 39) // 4 + k * 3 * MiB, 5 * 4096) == 5 * 4096
    assert pt.unmap(GiB * 7 + 4096, 4 * MiB - 4096) == 4 * MiB - 4096
    assert pt.unmap(GiB * 7, 4096) == 4096
    assert pt.stats() == empty
    assert refwalk.check(pt) == 1
    pt.map(0, UVA, 8 * MiB, RW, huge=False)
    pt.close()
    pt.close()                                  # idempotent
    assert live_tables() == base
    with pytest.raises(ValueError):
        pt.map(0, UVA, 4096, RW)
    pt2 = PageTable()
    pt2.map(0, UVA + 4096, 8 * MiB, RW)
    assert live_tables() > base
    del pt2
    gc.collect()
    assert live_tables() == base


def test_enomem_rolls_back_map_and_unmap():
    pt = PageTable()
    pt.map(GiB, UVA, 4096, RW)
    pt.map(0, UVA, GiB, RW)                     # a 1 GiB leaf to split
    before = (refwalk.leaves(pt), pt.stats())
    pt.set_table_limit(pt.stats()["tables"] + 2)
    # Needs 3 new leaf tables: the third fails after leaves were written.
    with pytest.raises(OSError) as ei:
        pt.map(GiB + 2 * MiB - 4096, UVA + 4096, 4096 + 6 * MiB, RW)
    assert errno_of(ei) == errno.ENOMEM
    assert (refwalk.leaves(pt), pt.stats()) == before
    # Splitting 1 GiB -> 2 MiB -> 4 KiB at both ends needs 3 tables.
    with pytest.raises(OSError) as ei:
        pt.unmap(4096, 4 * MiB)
    assert errno_of(ei) == errno.ENOMEM
    assert (refwalk.leaves(pt), pt.stats()) == before
    pt.set_table_limit(None)
    assert pt.unmap(4096, 4 * MiB) == 4 * MiB
    assert refwalk.check(pt) == pt.stats()["tables"]


# ---------------------------------------------------------------- permissions, A/D

def test_permission_errors():
    pt = PageTable()
    pt.map(0x1000, UVA, 4096, READ)
    pt.map(0x2000, UVA, 4096, WRITE)
    pt.map(0x3000, UVA, 4096, 0)
    assert pt.translate(0x1001, READ) == (UVA + 1, 4096)
    for iova, acc in [(0x1008, WRITE), (0x1008, RW), (0x2000, READ), (0x3000, READ),
                      (0x3fff, WRITE)]:
        with pytest.raises(IOPageFault) as ei:
            pt.translate(iova, acc)
        assert errno_of(ei) == errno.EACCES and ei.value.iova == iova
    assert pt.translate(0x3000, 0) == (UVA, 4096)     # look-up only
    with pytest.raises(OSError) as ei:
        pt.translate(0x1000, 4)
    assert errno_of(ei) == errno.EINVAL


def test_accessed_dirty_bits():
    pt = PageTable()
    pt.map(0, UVA, 4 * 4096, RW)
    pt.map(0x10000, UVA, 4096, READ)
    base = PTE_PRESENT | PTE_READ | PTE_WRITE
    assert [pt.get_ad(i * 4096) for i in range(4)] == [base] * 4
    pt.translate(0, 0)
    assert pt.get_ad(0) == base
    pt.translate(4096 + 5, READ)
    pt.translate(2 * 4096, WRITE)
    assert [pt.get_ad(i * 4096) for i in range(4)] == [
        base, base | PTE_ACCESSED, base | PTE_ACCESSED | PTE_DIRTY, base]
    with pytest.raises(IOPageFault):
        pt.translate(0x10000, WRITE)
    assert pt.get_ad(0x10000) == PTE_PRESENT | PTE_READ       # a fault marks nothing
    assert pt.translate_batch([3 * 4096 + 1, 3 * 4096 + 2], WRITE) == [UVA + 3 * 4096 + 1,
                                                                      UVA + 3 * 4096 + 2]
    assert pt.get_ad(3 * 4096) == base | PTE_ACCESSED | PTE_DIRTY
    with pytest.raises(IOPageFault) as ei:
        pt.get_ad(0x5000)
    assert errno_of(ei) == errno.EFAULT
    assert refwalk.walk(pt, 2 * 4096)[2] == base | PTE_ACCESSED | PTE_DIRTY


def test_translate_batch_stops_at_first_fault():
    pt = PageTable()
    pt.map(0, UVA, 2 * MiB, READ)              # one 2 MiB leaf
    pt.map(4 * MiB, UVA + 64 * MiB, 4096, RW)
    iovas = [5, 2 * MiB - 1, 4 * MiB + 7, 4096, 3 * MiB, 9]
    with pytest.raises(IOPageFault) as ei:
        pt.translate_batch(iovas, READ)
    assert errno_of(ei) == errno.EFAULT and ei.value.iova == 3 * MiB
    assert ei.value.done == [UVA + 5, UVA + 2 * MiB - 1, UVA + 64 * MiB + 7, UVA + 4096]
    with pytest.raises(IOPageFault) as ei:
        pt.translate_batch([4 * MiB, 8], WRITE)
    assert errno_of(ei) == errno.EACCES and ei.value.iova == 8 and ei.value.done == [UVA + 64 * MiB]
    assert pt.translate_batch([], READ) == []
    with pytest.raises(IOPageFault) as ei:
        pt.translate_batch([0, 1 << 50], 0)
    assert ei.value.iova == 1 << 50 and ei.value.done == [UVA]


def test_translate_batch_of_many_tables_agrees_with_the_reference_walker():
    # Longer than the batch's look-ahead (it prefetches the entries of later
    # IOVAs), in random order over many leaf tables, 2 MiB leaves and holes.
    pt = PageTable()
    pt.map(0, UVA + 4096, 64 * MiB, RW, huge=False)      # 32 leaf tables
    pt.map(64 * MiB, UVA + 64 * MiB, 8 * MiB, READ)       # 2 MiB leaves
    rng = random.Random(7)
    iovas = [rng.randrange(72 * MiB) for _ in range(500)]
    assert pt.translate_batch(iovas, READ) == [refwalk.walk(pt, i)[0] for i in iovas]
    # A hole, then IOVAs beyond the IOVA space within the look-ahead.
    bad = iovas[:100] + [72 * MiB] + [1 << 50] * 20 + iovas[100:]
    with pytest.raises(IOPageFault) as ei:
        pt.translate_batch(bad, READ)
    assert ei.value.iova == 72 * MiB and len(ei.value.done) == 100
    # WRITE: the first read-only 2 MiB leaf stops it, with EACCES.
    first_ro = next(k for k, i in enumerate(iovas) if i >= 64 * MiB)
    with pytest.raises(IOPageFault) as ei:
        pt.translate_batch(iovas, WRITE)
    assert (ei.value.errno, len(ei.value.done)) == (errno.EACCES, first_ro)


def test_translate_range_coalesces_contiguous_pieces():
    pt = PageTable()
    pt.map(0x10000, UVA + 0x5000, 0x3000, RW)     # 3 pages
    pt.map(0x13000, UVA + 0x8000, 0x1000, RW)     # contiguous with them
    pt.map(0x14000, UVA + 0x20000, 0x2000, RW)    # jumps
    pt.map(2 * MiB, UVA + 4 * MiB, 2 * MiB, RW)   # a 2 MiB leaf
    pt.map(0x16000, UVA + 0x22000, 2 * MiB - 0x16000, RW, huge=False)
    assert pt.translate_range(0x10123, 0x3edd, READ) == [(UVA + 0x5123, 0x3edd)]
    assert pt.translate_range(0x10123, 0x4000, READ) == [(UVA + 0x5123, 0x3edd),
                                                         (UVA + 0x20000, 0x123)]
    assert pt.translate_range(0x12800, 0x2800, READ) == [(UVA + 0x7800, 0x1800),
                                                         (UVA + 0x20000, 0x1000)]
    # 4 KiB pages up to 2 MiB, then the 2 MiB leaf at a different address.
    assert pt.translate_range(0x14000, 2 * MiB, WRITE) == [
        (UVA + 0x20000, 2 * MiB - 0x14000), (UVA + 4 * MiB, 0x14000)]
    assert pt.translate_range(0x14000, 0, READ) == []
    segs = ffi.new("struct iofs_seg[]", 2)
    assert pt.translate_range_into(0x12800, 0x2800, READ, segs) == 2
    assert (segs[1].addr, segs[1].len) == (UVA + 0x20000, 0x1000)


def test_translate_range_faults_mark_nothing():
    pt = PageTable()
    pt.map(0, UVA, 0x4000, RW)
    pt.map(0x4000, UVA + 0x10000, 0x1000, READ)
    pt.map(0x6000, UVA + 0x6000, 0x1000, RW)
    clean = [pt.get_ad(i) for i in (0, 0x3000, 0x4000, 0x6000)]
    with pytest.raises(IOPageFault) as ei:
        pt.translate_range(0x100, 0x4800, WRITE)
    assert errno_of(ei) == errno.EACCES and ei.value.iova == 0x4000
    with pytest.raises(IOPageFault) as ei:
        pt.translate_range(0x3000, 0x3800, READ)
    assert errno_of(ei) == errno.EFAULT and ei.value.iova == 0x5000
    with pytest.raises(IOPageFault) as ei:
        pt.translate_range((1 << 48) - 4096, 8192, READ)
    assert errno_of(ei) == errno.EFAULT and ei.value.iova == (1 << 48) - 4096
    one = ffi.new("struct iofs_seg[]", 1)
    with pytest.raises(OSError) as ei:
        pt.translate_range_into(0x3000, 0x2000, READ, one)
    assert errno_of(ei) == errno.ENOSPC
    assert [pt.get_ad(i) for i in (0, 0x3000, 0x4000, 0x6000)] == clean
    assert pt.translate_range(0x3ff0, 0x20, READ) == [
        (UVA + 0x3ff0, 0x10), (UVA + 0x10000, 0x10)]
    assert pt.get_ad(0x3000) & PTE_ACCESSED and pt.get_ad(0x4000) & PTE_ACCESSED
    assert not pt.get_ad(0x3000) & PTE_DIRTY
    assert not pt.get_ad(0) & PTE_ACCESSED


def test_translate_range_grows_its_segment_buffer():
    pt = PageTable()
    for i in range(300):                        # every page at a scattered address
        pt.map(i * 4096, UVA + (299 - i) * 8192, 4096, RW)
    segs = pt.translate_range(0, 300 * 4096, READ)
    assert segs == [(UVA + (299 - i) * 8192, 4096) for i in range(300)]


# ---------------------------------------------------------------- dirty tracking

def test_dirty_bitmap():
    pt = PageTable()
    pt.map(0, UVA, 16 * 4096, RW)
    pt.map(2 * MiB, UVA + 2 * MiB, 2 * MiB, RW)      # one 2 MiB leaf
    for i in (1, 3, 8, 15):
        pt.translate(i * 4096, WRITE)
    pt.translate(0, READ)                            # accessed, not dirty
    assert pt.dirty(0, 16 * 4096, 4096, clear=False) == bytes([0b00001010, 0b10000001])
    assert pt.dirty(0, 16 * 4096, 8192, clear=False) == bytes([0b10010011])
    bm = bytearray([0x40, 0])
    assert pt.dirty(0, 16 * 4096, 4096, bitmap=bm) is bm
    assert bm == bytes([0b01001010, 0b10000001])     # OR-ed in
    assert pt.dirty(0, 16 * 4096, 4096) == bytes(2)  # the previous call cleared
    # A dirty huge leaf marks every page it covers, also for part of it.
    pt.translate(3 * MiB, WRITE)
    assert pt.dirty(2 * MiB + 8192, 24 * 4096, 4096, clear=False) == b"\xff\xff\xff"
    assert pt.dirty(0, 8 * MiB, 2 * MiB) == bytes([0b0010])
    assert pt.get_ad(3 * MiB) == PTE_PRESENT | PTE_READ | PTE_WRITE | PTE_ACCESSED | PTE_LEAF
    for args in [(0, 4096, 3000), (4096, 4096, 8192), (0, 6144, 4096)]:
        with pytest.raises(OSError) as ei:
            pt.dirty(*args)
        assert errno_of(ei) == errno.EINVAL
    with pytest.raises(OSError) as ei:
        pt.dirty(1 << 48, 4096, 4096)
    assert errno_of(ei) == errno.ERANGE


def test_dirty_raw_returns_dirty_bytes():
    pt = PageTable()
    pt.map(0, UVA, 2 * MiB, RW)
    pt.translate(5, WRITE)
    bm = ffi.new("uint8_t[]", 1)
    assert lib.iofs_pt_read_and_clear_dirty(pt.cdata, MiB, 16 * 4096, 2 * 4096, bm, 0) \
        == 16 * 4096
    assert bm[0] == 0xff


# ---------------------------------------------------------------- the model

class Model:
    """The spec as a dict: page -> base IOVA of its leaf; leaf -> its state.

    Leaf choice follows the spec: at each IOVA the largest leaf (up to
    max_leaf_level, with huge) that iova and addr are aligned to and the
    rest of the range covers. A partial unmap keeps what is left of a leaf
    as the largest aligned next-level-or-smaller leaves, with its flags.
    """

    def __init__(self, granule, bpl, max_leaf):
        self.g = granule
        self.sizes = [granule << (bpl * lvl) for lvl in range(max_leaf + 1)]
        self.page = {}      # iova // g -> leaf base iova
        self.leaf = {}      # base -> [size, addr, prot, accessed, dirty]

    def _add(self, iova, addr, length, prot, cap, a=False, d=False):
        cur, end = iova, iova + length
        while cur < end:
            a_cur = addr + (cur - iova)
            size = self.g
            for s in self.sizes[1:cap + 1]:
                if cur % s == 0 and a_cur % s == 0 and end - cur >= s:
                    size = s
            self.leaf[cur] = [size, a_cur, prot, a, d]
            for p in range(cur // self.g, (cur + size) // self.g):
                self.page[p] = cur
            cur += size

    def mapped(self, iova, length):
        return any(p in self.page for p in range(iova // self.g, (iova + length) // self.g))

    def map(self, iova, addr, length, prot, huge):
        if self.mapped(iova, length):
            return -errno.EEXIST
        self._add(iova, addr, length, prot, len(self.sizes) - 1 if huge else 0)
        return 0

    def unmap(self, iova, length):
        end, removed = iova + length, 0
        bases = sorted({self.page[p] for p in range(iova // self.g, end // self.g)
                        if p in self.page})
        for b in bases:
            size, addr, prot, a, d = self.leaf.pop(b)
            for p in range(b // self.g, (b + size) // self.g):
                del self.page[p]
            lo, hi = max(b, iova), min(b + size, end)
            removed += hi - lo
            cap = self.sizes.index(size) - 1
            if b < lo:
                self._add(b, addr, lo - b, prot, cap, a, d)
            if hi < b + size:
                self._add(hi, addr + (hi - b), b + size - hi, prot, cap, a, d)
        return removed

    def lookup(self, iova):
        b = self.page.get(iova // self.g)
        return None if b is None else (b, self.leaf[b])

    def flags(self, size, prot, a, d):
        return (PTE_PRESENT | prot << 1 | (PTE_ACCESSED if a else 0) | (PTE_DIRTY if d else 0)
                | (PTE_LEAF if size > self.g else 0))

    def leaves(self):
        return [(b, s, addr, self.flags(s, prot, a, d))
                for b, (s, addr, prot, a, d) in sorted(self.leaf.items())]

    def check(self, iova, access):
        """(errno or 0, leaf base, leaf) for one access to iova."""
        hit = self.lookup(iova)
        if hit is None:
            return errno.EFAULT, None, None
        if access & ~hit[1][2]:
            return errno.EACCES, None, None
        return 0, hit[0], hit[1]

    def mark(self, leaf, access):
        if access:
            leaf[3] = True
            if access & WRITE:
                leaf[4] = True

    def translate(self, iova, access):
        err, b, leaf = self.check(iova, access)
        if err:
            return err, None
        self.mark(leaf, access)
        return 0, (leaf[1] + iova - b, leaf[0])

    def translate_range(self, iova, length, access):
        cur, end, segs, touched = iova, iova + length, [], []
        while cur < end:
            err, b, leaf = self.check(cur, access)
            if err:
                return err, cur
            piece = min(b + leaf[0], end) - cur
            a = leaf[1] + cur - b
            if segs and segs[-1][0] + segs[-1][1] == a:
                segs[-1][1] += piece
            else:
                segs.append([a, piece])
            touched.append(leaf)
            cur += piece
        for leaf in touched:
            self.mark(leaf, access)
        return 0, [tuple(s) for s in segs]

    def dirty(self, iova, length, page_size, clear):
        nbits = length // page_size
        bits = [0] * nbits
        for b, leaf in self.leaf.items():
            lo, hi = max(b, iova), min(b + leaf[0], iova + length)
            if lo < hi and leaf[4]:
                for k in range((lo - iova) // page_size, (hi - 1 - iova) // page_size + 1):
                    bits[k] = 1
                if clear:
                    leaf[4] = False
        out = bytearray((nbits + 7) // 8)
        for k, v in enumerate(bits):
            if v:
                out[k // 8] |= 1 << (k % 8)
        return out


# Geometries: the two real granules with 512-entry tables near level
# boundaries, and tiny tables so that every leaf level and split cascade
# occurs within a few thousand pages (the second has a half-used root).
GEOMETRIES = {
    "4k_bpl9_48": dict(granule=4096, bpl=9, ias=48, max_leaf=1,
                       window=((1 << 39) - 4 * MiB, 8 * MiB)),
    "2k_bpl9_31_mock": dict(granule=2048, bpl=9, ias=31, max_leaf=1,
                            window=((1 << 30) - 2 * MiB, 4 * MiB)),
    "4k_bpl3_24": dict(granule=4096, bpl=3, ias=24, max_leaf=3, window=(0, 16 * MiB)),
    "2k_bpl2_20": dict(granule=2048, bpl=2, ias=20, max_leaf=4, window=(0, 1 * MiB)),
}


def make_machine(name, geo):
    g = geo["granule"]
    wbase, wlen = geo["window"]
    npages = wlen // g
    sizes = [g << (geo["bpl"] * lvl) for lvl in range(geo["max_leaf"] + 1)]
    big = [s for s in sizes + [s * 2 for s in sizes] if s <= wlen]

    class PageTableMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.pt = PageTable(granule=g, ias_bits=geo["ias"], max_leaf_level=geo["max_leaf"],
                                bits_per_level=geo["bpl"])
            self.model = Model(g, geo["bpl"], geo["max_leaf"])

        def teardown(self):
            self.pt.close()

        # -- strategies that depend on the geometry
        def _range(self, data):
            # Half of the ranges are whole aligned blocks, so that every leaf
            # size (and a split of each) turns up; the rest are any pages.
            if data.draw(st.booleans(), label="aligned"):
                align = data.draw(st.sampled_from(big), label="align")
                start = data.draw(st.integers(0, wlen // align - 1), label="block") * align
                length = data.draw(st.integers(1, (wlen - start) // align), label="blocks") * align
            else:
                start = data.draw(st.integers(0, npages - 1), label="start") * g
                length = data.draw(st.integers(1, npages - start // g), label="pages") * g
            return wbase + start, length

        def _iova(self, data):
            # Any byte of the window, and a little either side of it.
            return wbase + data.draw(st.integers(max(-2 * g, -wbase), wlen + 2 * g - 1),
                                     label="off")

        def _target(self, data):
            # Mostly a byte of an existing leaf, so that A/D bits get set on
            # huge leaves that later unmaps split.
            if self.model.leaf and data.draw(st.integers(0, 3), label="target") > 0:
                base = data.draw(st.sampled_from(sorted(self.model.leaf)), label="leaf")
                return base + data.draw(st.integers(0, self.model.leaf[base][0] - 1),
                                        label="offset")
            return self._iova(data)

        @rule(data=st.data(), prot=st.sampled_from([READ, WRITE, RW, 0]), huge=st.booleans())
        def map(self, data, prot, huge):
            iova, length = self._range(data)
            how = data.draw(st.sampled_from(["congruent", "shifted", "random"]), label="addr")
            if how == "congruent":
                addr = UVA + iova
            elif how == "shifted":
                addr = UVA + iova + data.draw(st.sampled_from(big), label="shift")
            else:
                addr = UVA + data.draw(st.integers(0, 1 << 20), label="page") * g
            err = 0
            try:
                self.pt.map(iova, addr, length, prot, huge=huge)
            except OSError as e:
                err = e.errno
            assert -err == self.model.map(iova, addr, length, prot, huge)

        @rule(data=st.data())
        def unmap(self, data):
            iova, length = self._range(data)
            assert self.pt.unmap(iova, length) == self.model.unmap(iova, length)

        @rule(data=st.data(), extra=st.integers(0, 3))
        def map_or_unmap_under_table_limit(self, data, extra):
            """With a table cap, an operation either completes or (ENOMEM)
            leaves the table exactly as it was, checked by the invariant."""
            self.pt.set_table_limit(self.pt.stats()["tables"] + extra)
            iova, length = self._range(data)
            do_map = data.draw(st.booleans(), label="map")
            try:
                if do_map:
                    self.pt.map(iova, UVA + iova, length, RW)
                    assert self.model.map(iova, UVA + iova, length, RW, True) == 0
                else:
                    got = self.pt.unmap(iova, length)
                    assert got == self.model.unmap(iova, length)
            except OSError as e:
                # EEXIST is checked before anything is allocated.
                if do_map and self.model.mapped(iova, length):
                    assert e.errno == errno.EEXIST
                else:
                    assert e.errno == errno.ENOMEM
                    event(f"ENOMEM on {'map' if do_map else 'unmap'}")
            finally:
                self.pt.set_table_limit(None)

        @rule(data=st.data(), access=st.sampled_from([0, READ, WRITE, RW]))
        def translate(self, data, access):
            iova = self._target(data)
            ref = refwalk.walk(self.pt, iova)
            err, want = self.model.translate(iova, access)
            if ref is not None:
                assert (ref[0], ref[3]) == self.model.translate(iova, 0)[1]
            else:
                assert err == errno.EFAULT
            if err:
                with pytest.raises(IOPageFault) as ei:
                    self.pt.translate(iova, access)
                assert (ei.value.errno, ei.value.iova) == (err, iova)
            else:
                assert self.pt.translate(iova, access) == want

        @rule(data=st.data(), access=st.sampled_from([0, READ, WRITE, RW]))
        def translate_batch(self, data, access):
            n = data.draw(st.integers(0, 20), label="n")
            iovas = [self._target(data) for _ in range(n)]
            want, fault = [], None
            for iova in iovas:
                err, res = self.model.translate(iova, access)
                if err:
                    fault = (err, iova)
                    break
                want.append(res[0])
            if fault is None:
                assert self.pt.translate_batch(iovas, access) == want
            else:
                with pytest.raises(IOPageFault) as ei:
                    self.pt.translate_batch(iovas, access)
                assert (ei.value.errno, ei.value.iova, ei.value.done) == fault + (want,)

        @rule(data=st.data(), access=st.sampled_from([0, READ, WRITE, RW]))
        def translate_range(self, data, access):
            start = max(self._target(data), wbase)
            # A target just past the window still gets a range (of 0 or a
            # few granules), so faults beyond the last leaf are covered too.
            length = data.draw(st.integers(0, max(wbase + wlen - start, 0) + 2 * g), label="len")
            err, want = self.model.translate_range(start, length, access)
            if err:
                with pytest.raises(IOPageFault) as ei:
                    self.pt.translate_range(start, length, access)
                assert (ei.value.errno, ei.value.iova) == (err, want)
            else:
                assert self.pt.translate_range(start, length, access) == want

        @rule(data=st.data(), clear=st.booleans())
        def dirty(self, data, clear):
            ps = data.draw(st.sampled_from([g, 2 * g] + big), label="page_size")
            start = data.draw(st.integers(0, wlen // ps - 1), label="start") * ps
            length = data.draw(st.integers(1, (wlen - start) // ps), label="n") * ps
            want = self.model.dirty(wbase + start, length, ps, clear)
            assert self.pt.dirty(wbase + start, length, ps, clear=clear) == want

        @invariant()
        def matches_model_and_reference(self):
            leaves, ntables = refwalk.scan(self.pt)
            assert leaves == self.model.leaves()
            stats = self.pt.stats()
            assert stats["tables"] == ntables
            assert stats["leaves"] == len(leaves)
            assert stats["mapped_bytes"] == sum(s for _, s, _, _ in leaves)
            assert stats["leaves_at"] == [sum(1 for _, s, _, _ in leaves if s == size)
                                          for size in sizes] + [0] * (stats["levels"] - len(sizes))

    PageTableMachine.__name__ = f"PageTableMachine_{name}"
    return PageTableMachine


for _name, _geo in GEOMETRIES.items():
    _m = make_machine(_name, _geo)
    _m.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow,
                                                           HealthCheck.data_too_large])
    globals()[f"TestPageTable_{_name}"] = _m.TestCase


# ---------------------------------------------------------------- reference walker

def test_reference_walker_agrees_on_random_points():
    """Many IOVAs, C (look-up only) against the Python walker."""
    import random
    rnd = random.Random(5)
    pt = PageTable(ias_bits=57)
    starts = []
    for k in range(60):
        shift = rnd.choice([12, 21, 30])
        iova = rnd.randrange(0, 1 << (57 - shift)) << shift
        length = rnd.choice([4096, 2 * MiB, 3 * MiB + 4096, GiB, 2 * GiB + 8192])
        try:
            pt.map(iova, UVA + rnd.choice([0, 4096]) + (k << 31), length, rnd.choice([1, 2, 3]))
        except OSError as e:
            assert e.errno in (errno.EEXIST, errno.ERANGE)
        else:
            starts.append((iova, length))
    assert any(pt.stats()["leaves_at"][1:])
    probes = [i + rnd.randrange(0, n) for i, n in starts for _ in range(20)]
    probes += [i - 1 for i, n in starts] + [i + n for i, n in starts]
    probes += [rnd.randrange(0, 1 << 57) for _ in range(500)]
    for iova in probes:
        ref = refwalk.walk(pt, iova)
        try:
            got = pt.translate(iova, 0)
        except IOPageFault as e:
            assert e.errno == errno.EFAULT and ref is None
        else:
            assert ref is not None and got == (ref[0], ref[3])
