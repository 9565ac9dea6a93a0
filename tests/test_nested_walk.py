"""Tests of the nested (2-D) walk and IOTLB (cext/nested.c) through
cext/nested.py, held against the pure-Python reference (cext/refnested.py).

Guest tables are built in a local buffer ("guest memory"): with stage 2 a
real :class:`PageTable` mapping guest-physical pages to the buffer's pages
in a scrambled order (so a missed stage-2 translation shows up), or the
identity. Format facts: ../shared/reference/nesting.md §2.4 (VT-d), §3.4,
§3.5 (SMMUv3), §5 (IOTLB contract).
"""
import errno
import random

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cext import refnested
from cext._native import ffi, lib
from cext.nested import (ANY_ASID, EXEC, F_ACCESS_FLAG, F_ADDR_SIZE, F_BAD_CD, F_BAD_STE,
                         F_BAD_SUBSTREAMID, F_NON_CANONICAL, F_PERMISSION, F_RESERVED,
                         F_S2_OUTPUT, F_S2_WALK, F_TRANSLATION, NO_PASID, PRIV, READ,
                         VTD_EAFE, VTD_SRE, VTD_WPE, WRITE, Memory, NestedDomain, NestFault)
from cext.pagetable import PageTable

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
RW = READ | WRITE
GPA_BASE = 0x4000_0000          # guest RAM starts at 1 GiB (GPA)
UVA = 0x7F00_0000_0000          # an HVA aligned to 1 GiB (for outputs never read)


def aligned_buffer(size):
    """(owner, page-aligned uint8_t * of size bytes)."""
    raw = ffi.new("uint8_t[]", size + PAGE)
    a = int(ffi.cast("uintptr_t", raw))
    return raw, ffi.cast("uint8_t *", raw) + ((-a) % PAGE)


class Guest:
    """``npages`` of guest RAM at GPA_BASE in a local buffer; stage 2 maps
    GPA page i to buffer page perm[i] (scrambled)."""

    def __init__(self, npages=64, s2=True, seed=1):
        self.npages = npages
        self._raw, self.buf = aligned_buffer(npages * PAGE)
        self.hva0 = int(ffi.cast("uintptr_t", self.buf))
        self.mem = Memory.local(self.buf, size=npages * PAGE)
        self.perm = list(range(npages))
        random.Random(seed).shuffle(self.perm)
        self.s2 = None
        if s2:
            self.s2 = PageTable(ias_bits=48)
            for i in range(npages):
                self.s2.map(GPA_BASE + i * PAGE, self.hva0 + self.perm[i] * PAGE, PAGE, RW)
        self.next = 0

    def hva(self, gpa):
        i, off = divmod(gpa - GPA_BASE, PAGE)
        assert 0 <= i < self.npages, hex(gpa)
        return self.hva0 + self.perm[i] * PAGE + off

    def alloc(self, n=1):
        """n zeroed, contiguous guest pages -> GPA."""
        gpa = GPA_BASE + self.next * PAGE
        self.next += n
        assert self.next <= self.npages
        return gpa

    def w64(self, gpa, val):
        ffi.cast("uint64_t *", self.hva(gpa))[0] = val

    def r64(self, gpa):
        return ffi.cast("uint64_t *", self.hva(gpa))[0]

    def rbytes(self, gpa, n):
        return bytes(ffi.buffer(ffi.cast("uint8_t *", self.hva(gpa)), n))

    def snapshot(self):
        return bytes(ffi.buffer(self.buf, self.npages * PAGE))


# ---------------------------------------------------------------- VT-d tables

P, RWB, US, A, D, PS, EA = 1, 2, 4, 1 << 5, 1 << 6, 1 << 7, 1 << 10
XD = 1 << 63
TBL = P | RWB | US


class VtdTables:
    def __init__(self, g, levels=4):
        self.g, self.levels = g, levels
        self.root = g.alloc()

    def entry_gpa(self, iova, level, create=True, tflags=TBL):
        """GPA of the level-``level`` entry for iova (tables created on the way)."""
        t = self.root
        for L in range(self.levels - 1, level, -1):
            egpa = t + 8 * ((iova >> (12 + 9 * L)) & 511)
            e = self.g.r64(egpa)
            if not e & P:
                assert create
                nt = self.g.alloc()
                self.g.w64(egpa, nt | tflags)
                e = nt | tflags
            t = e & 0x000F_FFFF_FFFF_F000
        return t + 8 * ((iova >> (12 + 9 * level)) & 511)

    def map(self, iova, gpa, level=0, flags=TBL, tflags=TBL):
        e = gpa | flags | (PS if level else 0)
        egpa = self.entry_gpa(iova, level, tflags=tflags)
        self.g.w64(egpa, e)
        return egpa


def vtd(g, t, **kw):
    kw.setdefault("addr_width", 57 if t.levels == 5 else 48)
    return NestedDomain.vtd(t.root, s2=g.s2, mem=g.mem, **kw)


def fault_of(fn, *a, **kw):
    with pytest.raises(NestFault) as ei:
        fn(*a, **kw)
    return ei.value


@pytest.mark.parametrize("levels", [4, 5])
def test_vtd_4k_translation_through_both_stages(levels):
    g = Guest()
    t = VtdTables(g, levels)
    data = g.alloc()
    iova = 0x12_3456_7000 if levels == 4 else 0x1_0012_3456_7000
    t.map(iova, data)
    d = vtd(g, t)
    r = d.translate(iova + 0x123, READ)
    assert (r.gpa, r.out, r.page_size, r.s1_size, r.s1_level) == (
        data + 0x123, g.hva(data) + 0x123, PAGE, PAGE, 0)
    assert r.perms == READ | WRITE | EXEC and not r.hit
    assert d.translate(iova + 0x124, READ).hit


@pytest.mark.parametrize("level,size", [(1, 2 * MiB), (2, GiB)])
def test_vtd_large_leaves(level, size):
    g = Guest()
    t = VtdTables(g)
    iova = 3 * GiB
    out_gpa = 2 * GiB                  # guest-physical; S2 gives its own page size
    t.map(iova, out_gpa, level=level)
    if level == 1:       # S2 with 2 MiB leaves (the output is not read: any HVA will do)
        g.s2.map(out_gpa, UVA, 4 * MiB, RW, huge=True)
    else:                # S2 with one 4 KiB page
        g.s2.map(out_gpa + 0x1000, g.hva0, PAGE, RW)
    d = vtd(g, t)
    if level == 1:
        r = d.translate(iova + 0x1F_F123)
        assert (r.gpa, r.s1_size, r.s1_level) == (out_gpa + 0x1F_F123, size, 1)
        assert r.out == UVA + 0x1F_F123 and r.page_size == 2 * MiB
    else:
        r = d.translate(iova + 0x1234)
        assert (r.gpa, r.s1_size, r.s1_level, r.page_size) == (out_gpa + 0x1234, GiB, 2, PAGE)
        assert r.out == g.hva0 + 0x234
        with pytest.raises(NestFault):
            d.translate(iova + 5 * MiB)
        # 1 GiB leaves need FS1GP; without it PS in a PDPTE is reserved
        d2 = vtd(g, t, fs1gp=False)
        f = fault_of(d2.translate, iova + 0x1234)
        assert (f.stage, f.reason, f.level, f.errno) == (1, F_RESERVED, 2, errno.EFAULT)


def test_vtd_canonical_upper_half():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    iova = 0xFFFF_8000_0000_0000 | 0x5000
    t.map(iova, data)
    d = vtd(g, t)
    assert d.translate(iova).gpa == data
    for bad in (0x0000_8000_0000_0000, 0xFFFF_0000_0000_5000, 0x8000_0000_0000_0000):
        f = fault_of(d.translate, bad)
        assert (f.stage, f.reason, f.addr, f.errno) == (1, F_NON_CANONICAL, bad, errno.EFAULT)
    # 5-level: bits [63:56] must be equal
    t5 = VtdTables(g, 5)
    t5.map(0x00FF_0000_0000_0000, data)
    d5 = vtd(g, t5)
    assert d5.translate(0x00FF_0000_0000_0000).gpa == data
    assert fault_of(d5.translate, 0x0100_0000_0000_0000).reason == F_NON_CANONICAL


def test_vtd_ad_bits_written_back():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    iova = 0x40_0000
    leaf = t.map(iova, data)
    d = vtd(g, t, capacity=0)
    d.translate(iova, READ)
    # A in every entry used, D not (ref §2.4 "A/D updates")
    for L in range(3, -1, -1):
        e = g.r64(t.entry_gpa(iova, L, create=False))
        assert e & A and not e & D and not e & EA, (L, hex(e))
    d.translate(iova, WRITE)
    assert g.r64(leaf) & D
    assert not g.r64(t.entry_gpa(iova, 1, create=False)) & D     # D only at the leaf
    # EAFE: EA set together with A
    iova2 = 0x80_0000
    leaf2 = t.map(iova2, data)
    d2 = vtd(g, t, flags=VTD_EAFE, capacity=0)
    d2.translate(iova2, READ)
    assert g.r64(leaf2) & (A | EA) == A | EA
    assert d.stats()["ad_writes"] >= 5


def test_stage2_dirty_bits_see_nested_dma():
    """The parent's dirty tracking sees nested DMA (ref §6): the output page
    is dirty after a write, only accessed after a read; pages of the guest's
    tables are written (A/D) and so dirty too; a hit adds nothing."""
    from cext.pagetable import PTE_ACCESSED, PTE_DIRTY
    g = Guest()
    t = VtdTables(g)
    rd, wr = g.alloc(), g.alloc()
    leaf = t.map(0x1000, rd)
    t.map(0x2000, wr)
    d = vtd(g, t)
    d.translate(0x1000, READ)
    assert g.s2.get_ad(rd) & (PTE_ACCESSED | PTE_DIRTY) == PTE_ACCESSED
    assert g.s2.get_ad(leaf) & PTE_DIRTY                     # A written into the PT page
    d.translate(0x2000, WRITE)
    assert g.s2.get_ad(wr) & PTE_DIRTY
    g.s2.dirty(wr, PAGE, PAGE, clear=True)                   # GET_DIRTY_BITMAP clears
    assert d.translate(0x2000, WRITE).hit                    # cached: dirtiness not seen...
    assert not g.s2.get_ad(wr) & PTE_DIRTY
    d.forget_dirty()                                         # ...until the IOTLB forgets it
    assert not d.translate(0x2000, WRITE).hit
    assert g.s2.get_ad(wr) & PTE_DIRTY


def test_vtd_ad_compare_and_set():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    leaf = t.map(0x1000, data)
    m = g.mem
    h = g.hva(leaf)
    v = m.read64(h)
    assert not m.cas64(h, v ^ 1, v | A)          # a changed word is not overwritten
    assert m.read64(h) == v
    assert m.cas64(h, v, v | A) and m.read64(h) == v | A


def test_vtd_permissions_user_requests():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    t.map(0x1000, data, flags=P | US)                            # read-only leaf
    t.map(0x20_0000, data, flags=TBL, tflags=P | US)             # R/W=0 in the PDE
    t.map(0x4000_0000, data, flags=P | RWB)                      # supervisor-only leaf
    t.map(0x8000_0000, data, flags=TBL | XD)
    d = vtd(g, t)
    assert d.translate(0x1000, READ).perms == READ | EXEC
    for iova in (0x1000, 0x20_0000):
        before = g.snapshot()
        f = fault_of(d.translate, iova, WRITE)
        assert (f.stage, f.reason, f.addr, f.errno) == (1, F_PERMISSION, iova, errno.EACCES)
        assert g.snapshot() == before            # no A/D on a faulting request
    f = fault_of(d.translate, 0x4000_0000, READ)
    assert (f.stage, f.reason) == (1, F_PERMISSION)
    assert d.translate(0x8000_0000, RW).perms == RW
    assert fault_of(d.translate, 0x8000_0000, READ | EXEC).reason == F_PERMISSION
    # supervisor requests need SRE
    assert fault_of(d.translate, 0x1000, READ | PRIV).reason == F_PERMISSION


def test_vtd_supervisor_requests_sre_wpe():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    t.map(0x1000, data, flags=P)                                 # supervisor, read-only
    d = vtd(g, t, flags=VTD_SRE)
    assert d.translate(0x1000, READ | PRIV).gpa == data           # U/S ignored
    assert d.translate(0x1000, WRITE | PRIV).gpa == data          # R/W ignored without WPE
    dw = vtd(g, t, flags=VTD_SRE | VTD_WPE)
    assert dw.translate(0x1000, READ | PRIV).gpa == data
    f = fault_of(dw.translate, 0x1000, WRITE | PRIV)
    assert (f.stage, f.reason, f.errno) == (1, F_PERMISSION, errno.EACCES)
    assert fault_of(dw.translate, 0x1000, READ).reason == F_PERMISSION   # user: U/S=0


@pytest.mark.parametrize("level", [3, 2, 1, 0])
def test_vtd_not_present_at_each_level(level):
    g = Guest()
    t = VtdTables(g)
    iova = 0x7_0000_0000
    data = g.alloc()
    t.map(iova, data)
    egpa = t.entry_gpa(iova, level, create=False)
    g.w64(egpa, 0)
    d = vtd(g, t)
    f = fault_of(d.translate, iova + 8)
    assert (f.stage, f.reason, f.level, f.addr, f.iova) == (1, F_TRANSLATION, level, iova + 8,
                                                            iova + 8)


@pytest.mark.parametrize("what", ["high-bit", "ps-pml4", "2m-low", "1g-low"])
def test_vtd_reserved_bits(what):
    g = Guest()
    t = VtdTables(g)
    iova = 0x8000_0000
    data = g.alloc()
    if what == "high-bit":
        t.map(iova, data | (1 << 50))
        level, kw = 0, dict(haw=48)
    elif what == "ps-pml4":
        g.w64(t.root + 8 * (iova >> 39), TBL | PS)
        level, kw = 3, {}
    elif what == "2m-low":
        t.map(iova, 0x20_0000 | (1 << 13), level=1)
        level, kw = 1, {}
    else:
        t.map(iova, 0x4000_0000 | (1 << 21), level=2)
        level, kw = 2, {}
    d = vtd(g, t, **kw)
    f = fault_of(d.translate, iova)
    assert (f.stage, f.reason, f.level, f.errno) == (1, F_RESERVED, level, errno.EFAULT)
    assert d.stats()["entries"] == 0                   # faults are never cached


def test_vtd_stage2_faults():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    iova = 0x1000
    t.map(iova, data)
    t.map(0x2000, GPA_BASE + 512 * PAGE)               # output GPA outside guest RAM
    d = vtd(g, t)
    f = fault_of(d.translate, 0x2000)
    assert (f.stage, f.reason, f.addr, f.errno) == (2, F_S2_OUTPUT, GPA_BASE + 512 * PAGE,
                                                    errno.EFAULT)
    # a table page (the PDPT) unmapped at stage 2: stage-2 fault at the entry's GPA
    pdpte = t.entry_gpa(iova, 2, create=False)
    g.s2.unmap(pdpte & ~0xFFF, PAGE)
    d.s2_changed()
    f = fault_of(d.translate, iova)
    assert (f.stage, f.reason, f.addr, f.level) == (2, F_S2_WALK, pdpte, 2)
    # stage 2 read-only: reads fine, a write faults at stage 2 on the output
    g.s2.map(pdpte & ~0xFFF, g.hva(pdpte & ~0xFFF), PAGE, RW)
    g.s2.unmap(data, PAGE)
    g.s2.map(data, g.hva0 + g.perm[(data - GPA_BASE) // PAGE] * PAGE, PAGE, READ)
    d.s2_changed()
    r = d.translate(iova, READ)
    assert r.perms == READ | EXEC                      # S1 RW ∩ S2 R
    f = fault_of(d.translate, iova, WRITE)
    assert (f.stage, f.reason, f.addr, f.errno) == (2, F_S2_OUTPUT, data, errno.EACCES)


def test_vtd_stage2_readonly_table_blocks_ad_update():
    g = Guest()
    t = VtdTables(g)
    data = g.alloc()
    leaf = t.map(0x1000, data)
    pt_page = leaf & ~0xFFF
    idx = (pt_page - GPA_BASE) // PAGE
    g.s2.unmap(pt_page, PAGE)
    g.s2.map(pt_page, g.hva0 + g.perm[idx] * PAGE, PAGE, READ)
    d = vtd(g, t)
    f = fault_of(d.translate, 0x1000, READ)            # A must be set in the PTE: S2 write
    assert (f.stage, f.reason, f.addr, f.level, f.errno) == (2, F_S2_WALK, leaf, 0, errno.EACCES)
    g.w64(leaf, g.r64(leaf) | A)                       # A already set: no write needed
    assert d.translate(0x1000, READ).gpa == data


# ---------------------------------------------------------------- SMMUv3 tables

AF, AP1, AP2, NG, DBM = 1 << 10, 1 << 6, 1 << 7, 1 << 11, 1 << 51
PXN, UXN, PXNT, XNT, APT0, APT1 = 1 << 53, 1 << 54, 1 << 59, 1 << 60, 1 << 61, 1 << 62
PAGE_D = 3 | AF | AP1          # L3 page, user RW
BLOCK_D = 1 | AF | AP1


def cd0_of(t0sz=16, asid=1, ips=5, tbi=False, affd=False, ha=False, hd=False, wxn=False,
           v=True, aa64=True, tg0=0, epd0=False):
    return (t0sz | tg0 << 6 | (1 << 14 if epd0 else 0) | (1 << 30) | (1 << 31 if v else 0)
            | ips << 32 | (1 << 35 if affd else 0) | (1 << 36 if wxn else 0)
            | (1 << 38 if tbi else 0) | (1 << 41 if aa64 else 0) | (1 << 42 if hd else 0)
            | (1 << 43 if ha else 0) | asid << 48)


def ste_of(ctx, cdmax=0, s1fmt=0, config=5, s1dss=0, v=True):
    return ((1 if v else 0) | config << 1 | s1fmt << 4 | ctx | cdmax << 59, s1dss)


class ArmTables:
    """VMSAv8-64 4 KiB tables with IAS = 64 - t0sz."""

    def __init__(self, g, t0sz=16):
        self.g = g
        self.ias = 64 - t0sz
        self.start = 0 if self.ias > 39 else 1 if self.ias > 30 else 2
        self.root = g.alloc()

    def entry_gpa(self, va, level, tattrs=0):
        t = self.root
        for L in range(self.start, level):
            egpa = t + 8 * ((va >> (12 + 9 * (3 - L))) & 511)
            e = self.g.r64(egpa)
            if not e & 1:
                nt = self.g.alloc()
                e = nt | 3 | tattrs
                self.g.w64(egpa, e)
            t = e & 0x0000_FFFF_FFFF_F000
        return t + 8 * ((va >> (12 + 9 * (3 - level))) & 511)

    def map(self, va, oa, level=3, attrs=None, tattrs=0):
        if attrs is None:
            attrs = PAGE_D if level == 3 else BLOCK_D
        egpa = self.entry_gpa(va, level, tattrs)
        self.g.w64(egpa, oa | attrs)
        return egpa


class Smmu:
    """A linear CD table of ``ncd`` CDs and one ArmTables per CD on demand."""

    def __init__(self, g, ncd=4, cdmax=2, t0sz=16, s1fmt=0, **cdkw):
        self.g = g
        self.cdtab = g.alloc()
        self.tables = {}
        self.cdmax = cdmax
        if s1fmt == 0:
            self.ste = ste_of(self.cdtab, cdmax=cdmax)
        else:
            self.ste = ste_of(self.cdtab, cdmax=cdmax, s1fmt=s1fmt)
            self.l2 = {}
        self.s1fmt = s1fmt
        for ssid in range(ncd):
            self.set_cd(ssid, t0sz=t0sz, asid=ssid + 1, **cdkw)

    def cd_gpa(self, ssid):
        if self.s1fmt == 0:
            return self.cdtab + 64 * ssid
        l1i = ssid >> 6
        if l1i not in self.l2:
            self.l2[l1i] = self.g.alloc()
            self.g.w64(self.cdtab + 8 * l1i, self.l2[l1i] | 1)
        return self.l2[l1i] + 64 * (ssid & 63)

    def set_cd(self, ssid, t0sz=16, tables=None, **kw):
        t = tables or ArmTables(self.g, t0sz)
        self.tables[ssid] = t
        cd = self.cd_gpa(ssid)
        self.g.w64(cd, cd0_of(t0sz=t0sz, **kw))
        self.g.w64(cd + 8, t.root)
        return t

    def domain(self, ste=None, **kw):
        return NestedDomain.smmu(ste or self.ste, s2=self.g.s2, mem=self.g.mem, **kw)


def test_smmu_page_and_blocks_at_every_level():
    g = Guest()
    s = Smmu(g)
    t = s.tables[1]
    data = g.alloc()
    t.map(0x1000, data)                       # L3 page
    t.map(0x4000_0000, 2 * GiB, level=1)      # 1 GiB block
    t.map(0x20_0000, 4 * GiB, level=2)        # 2 MiB block
    d = s.domain()
    r = d.translate(0x1234, READ, pasid=1)
    assert (r.gpa, r.out, r.s1_size, r.s1_level, r.asid) == (data + 0x234, g.hva(data) + 0x234,
                                                             PAGE, 3, 2)
    g.s2.map(2 * GiB, UVA, 2 * MiB, RW)
    r = d.translate(0x4000_1234, WRITE, pasid=1)
    assert (r.gpa, r.s1_size, r.s1_level, r.page_size) == (2 * GiB + 0x1234, GiB, 1, 2 * MiB)
    g.s2.map(4 * GiB, g.hva0, 2 * MiB, RW)
    r = d.translate(0x3F_FFFF, READ, pasid=1)
    assert (r.gpa, r.s1_size, r.s1_level) == (4 * GiB + 0x1F_FFFF, 2 * MiB, 2)
    # another SSID uses another CD and tables
    f = fault_of(d.translate, 0x1000, READ, pasid=2)
    assert (f.stage, f.reason, f.level) == (1, F_TRANSLATION, 0)


@pytest.mark.parametrize("t0sz,start", [(25, 1), (34, 2), (39, 2)])
def test_smmu_start_level_from_t0sz(t0sz, start):
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0, t0sz=t0sz)
    t = s.tables[0]
    assert t.start == start
    data = g.alloc()
    va = (1 << (64 - t0sz)) - PAGE
    t.map(va, data)
    d = s.domain()
    assert d.translate(va + 5).gpa == data + 5
    f = fault_of(d.translate, 1 << (64 - t0sz))          # beyond IAS
    assert (f.stage, f.reason, f.level) == (1, F_TRANSLATION, start)


def test_smmu_two_level_cd_table():
    g = Guest()
    s = Smmu(g, ncd=0, cdmax=8, s1fmt=1)
    t = s.set_cd(70, asid=9)
    data = g.alloc()
    t.map(0x1000, data)
    d = s.domain()
    r = d.translate(0x1000, pasid=70)
    assert (r.gpa, r.asid) == (data, 9)
    f = fault_of(d.translate, 0x1000, pasid=200)          # L1 descriptor V=0
    assert (f.stage, f.reason) == (1, F_BAD_SUBSTREAMID)
    f = fault_of(d.translate, 0x1000, pasid=256)          # >= 2^S1CDMax
    assert (f.stage, f.reason) == (1, F_BAD_SUBSTREAMID)


def test_smmu_ste_configs_and_s1dss():
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=1)
    data = g.alloc()
    s.tables[0].map(0x1000, data)
    ctx = s.cdtab
    assert fault_of(s.domain(ste_of(ctx, v=False)).translate, 0x1000).reason == F_BAD_STE
    assert fault_of(s.domain(ste_of(ctx, config=0)).translate, 0x1000).reason == F_BAD_STE
    byp = s.domain(ste_of(ctx, config=4))
    assert byp.translate(data + 8).out == g.hva(data) + 8                 # stage 2 only
    assert fault_of(s.domain(ste_of(ctx, cdmax=1, s1dss=0)).translate,
                    0x1000).reason == F_BAD_SUBSTREAMID
    assert s.domain(ste_of(ctx, cdmax=1, s1dss=1)).translate(data).out == g.hva(data)
    assert s.domain(ste_of(ctx, cdmax=1, s1dss=2)).translate(0x1000).gpa == data
    assert s.domain(ste_of(ctx, cdmax=1)).translate(0x1000, pasid=0).gpa == data


@pytest.mark.parametrize("kw", [dict(v=False), dict(aa64=False), dict(tg0=1), dict(t0sz=40),
                                dict(t0sz=15), dict(ips=7)])
def test_smmu_bad_cd(kw):
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0)
    s.set_cd(0, tables=s.tables[0], **{"t0sz": 16, **kw})
    f = fault_of(s.domain().translate, 0x1000)
    assert (f.stage, f.reason, f.cls) == (1, F_BAD_CD, lib.IOFS_NEST_CLASS_CD)


def test_smmu_permissions():
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0)
    t = s.tables[0]
    data = g.alloc()
    t.map(0x1000, data, attrs=3 | AF | AP1 | AP2)         # read-only
    t.map(0x2000, data, attrs=3 | AF)                     # privileged only
    t.map(0x4000_0000, data, attrs=PAGE_D, tattrs=APT1)   # APTable[1]: no write below
    t.map(0x8000_0000, data, attrs=PAGE_D, tattrs=APT0)   # APTable[0]: no EL0 below
    t.map(0x3000, data, attrs=PAGE_D | UXN)
    t.map(0x4000, data, attrs=PAGE_D | PXN)
    d = s.domain()
    assert d.translate(0x1000, READ).perms == READ | EXEC
    for iova, acc in ((0x1000, WRITE), (0x2000, READ), (0x4000_0000, WRITE),
                      (0x8000_0000, READ), (0x3000, READ | EXEC),
                      (0x4000, READ | EXEC | PRIV)):
        f = fault_of(d.translate, iova, acc)
        assert (f.stage, f.reason, f.addr, f.errno) == (1, F_PERMISSION, iova, errno.EACCES)
    assert d.translate(0x2000, RW | PRIV).gpa == data
    assert d.translate(0x8000_0000, READ | PRIV).gpa == data
    assert d.translate(0x3000, READ | EXEC | PRIV).gpa == data
    assert d.translate(0x4000, READ | EXEC).gpa == data


def test_smmu_access_flag_and_httu():
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0)
    t = s.tables[0]
    data = g.alloc()
    leaf = t.map(0x1000, data, attrs=3 | AP1)             # AF = 0
    d = s.domain()
    f = fault_of(d.translate, 0x1000)
    assert (f.stage, f.reason, f.level) == (1, F_ACCESS_FLAG, 3)
    s.set_cd(0, tables=t, affd=True)
    assert s.domain().translate(0x1000).gpa == data       # AFFD: no fault, AF stays 0
    assert not g.r64(leaf) & AF
    s.set_cd(0, tables=t, ha=True, hd=True)
    assert fault_of(s.domain().translate, 0x1000).reason == F_ACCESS_FLAG   # no HTTU advertised
    dh = s.domain(httu=True)
    dh.translate(0x1000)
    assert g.r64(leaf) & AF
    # DBM: AP[2]=1 is writable-clean; a write clears AP[2]
    leaf2 = t.map(0x2000, data, attrs=3 | AF | AP1 | AP2 | DBM)
    dh.translate(0x2000, WRITE)
    assert not g.r64(leaf2) & AP2
    leaf3 = t.map(0x3000, data, attrs=3 | AF | AP1 | AP2)    # no DBM: read-only
    assert fault_of(dh.translate, 0x3000, WRITE).reason == F_PERMISSION
    assert g.r64(leaf3) & AP2


def test_smmu_address_size_and_descriptor_faults():
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0, ips=0)                    # IPS 32 bits
    t = s.tables[0]
    t.map(0x1000, 1 << 33)
    e = t.entry_gpa(0x20_0000, 3)
    g.w64(e, (GPA_BASE + PAGE) | 1 | AF | AP1)            # "block" at L3: invalid
    l0 = t.root + 8 * (0x80_0000_0000 >> 39)
    g.w64(l0, GPA_BASE | 1 | AF)                          # block at L0: invalid
    d = s.domain()
    f = fault_of(d.translate, 0x1000)
    assert (f.stage, f.reason, f.level) == (1, F_ADDR_SIZE, 3)
    assert fault_of(d.translate, 0x20_0000).reason == F_TRANSLATION
    f = fault_of(d.translate, 0x80_0000_0000)
    assert (f.reason, f.level) == (F_TRANSLATION, 0)
    # TBI: the top byte is ignored
    s.set_cd(0, tables=t, tbi=True, ips=5)
    data = g.alloc()
    t.map(0x5000, data)
    assert s.domain().translate(0xAB00_0000_0000_5000).gpa == data
    assert fault_of(d.translate, 0xAB00_0000_0000_5000).reason == F_TRANSLATION


def test_smmu_stage2_faults_on_cd_walk_and_output():
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0)
    t = s.tables[0]
    data = g.alloc()
    t.map(0x1000, data)
    t.map(0x2000, GPA_BASE + 600 * PAGE)
    d = s.domain()
    f = fault_of(d.translate, 0x2000, WRITE)
    assert (f.stage, f.reason, f.addr, f.cls) == (2, F_S2_OUTPUT, GPA_BASE + 600 * PAGE,
                                                  lib.IOFS_NEST_CLASS_IN)
    l3 = t.entry_gpa(0x1000, 3)
    g.s2.unmap(l3 & ~0xFFF, PAGE)
    d.s2_changed()
    f = fault_of(d.translate, 0x1000)
    assert (f.stage, f.reason, f.addr, f.cls, f.level) == (2, F_S2_WALK, l3,
                                                           lib.IOFS_NEST_CLASS_TT, 3)
    g.s2.unmap(s.cdtab, PAGE)
    d.inv_cd_all()
    f = fault_of(d.translate, 0x1000)
    assert (f.stage, f.reason, f.addr, f.cls) == (2, F_S2_WALK, s.cdtab, lib.IOFS_NEST_CLASS_CD)


# ---------------------------------------------------------------- IOTLB

def _vtd_setup(capacity=64):
    g = Guest()
    t = VtdTables(g)
    pages = [g.alloc() for _ in range(4)]
    for i in range(4):
        t.map(0x10_0000 + i * PAGE, pages[i])
    return g, t, pages, vtd(g, t, capacity=capacity)


@pytest.mark.parametrize("fmt", ["vtd", "smmu"])
def test_iotlb_block_invalidated_by_one_address(fmt):
    """Pieces of one 2 MiB stage-1 leaf go together: a TLBI / PSI naming
    one address in the block drops all of them (ref §3.6, §5.2)."""
    g = Guest()
    g.s2.map(2 * GiB, UVA, 4 * MiB, RW)
    if fmt == "vtd":
        t = VtdTables(g)
        t.map(0x20_0000, 2 * GiB, level=1)
        d = vtd(g, t)
        pasid = NO_PASID
    else:
        s = Smmu(g, ncd=1, cdmax=0)
        t = s.tables[0]
        t.map(0x20_0000, 2 * GiB, level=2)
        d = s.domain()
        pasid = NO_PASID
    for off in (0, 0x1000, 0x1F_F000):
        d.translate(0x20_0000 + off, READ, pasid=pasid)
    d.translate(0x20_0000 + 0x1000, READ, pasid=pasid)
    assert d.stats()["entries"] == 3 and d.stats()["hits"] == 1
    n = d.inv_vtd(0x20_0000, 1) if fmt == "vtd" else d.inv_va(0x20_0000, PAGE, asid=1)
    assert n == 3 and d.stats()["entries"] == 0


def test_iotlb_hit_after_miss_and_counters():
    g, t, pages, d = _vtd_setup()
    assert not d.translate(0x10_0000, WRITE).hit
    walks = d.stats()["walks"]
    r = d.translate(0x10_0010, WRITE)
    assert r.hit and r.out == g.hva(pages[0]) + 0x10
    s = d.stats()
    assert (s["hits"], s["misses"], s["walks"], s["entries"]) == (1, 1, walks, 1)
    # a write on an entry filled by a read walks again (D must be set)
    d.translate(0x10_1000, READ)
    leaf = t.entry_gpa(0x10_1000, 0, create=False)
    assert not g.r64(leaf) & D
    assert not d.translate(0x10_1000, WRITE).hit
    assert g.r64(leaf) & D
    assert d.translate(0x10_1000, WRITE).hit and d.translate(0x10_1000, READ).hit


def test_iotlb_stale_until_the_right_invalidation():
    g, t, pages, d = _vtd_setup()
    new = g.alloc()
    for i in range(4):
        d.translate(0x10_0000 + i * PAGE, WRITE)
    # the guest remaps page 0 and page 1 and makes page 2 not present
    t.map(0x10_0000, new)
    t.map(0x10_1000, new)
    g.w64(t.entry_gpa(0x10_2000, 0, create=False), 0)
    # missed invalidation: the old translations are really used
    assert d.translate(0x10_0000, WRITE).out == g.hva(pages[0])
    assert d.translate(0x10_2000, WRITE).out == g.hva(pages[2])
    assert d.walk(0x10_0000).gpa == new                         # a fresh walk differs
    # an invalidation elsewhere changes nothing
    assert d.inv_vtd(0x20_0000, 16) == 0
    assert d.translate(0x10_0000).out == g.hva(pages[0])
    # too narrow: page 0 only; page 1 and page 2 stay stale
    assert d.inv_vtd(0x10_0000, 1, flags=1) == 1
    assert d.translate(0x10_0000).out == g.hva(new)
    assert d.translate(0x10_1000).out == g.hva(pages[1])
    assert d.translate(0x10_2000).out == g.hva(pages[2])
    # the right one ends it
    assert d.inv_vtd(0x10_1000, 2) == 2
    assert d.translate(0x10_1000).out == g.hva(new)
    f = fault_of(d.translate, 0x10_2000)
    assert (f.stage, f.reason) == (1, F_TRANSLATION)
    assert d.translate(0x10_3000).hit                            # untouched entry stays
    assert d.inv_vtd(0, (1 << 64) - 1) == d.stats()["capacity"] - 64 + 3
    assert d.stats()["entries"] == 0


def test_iotlb_stale_permission_survives():
    g, t, pages, d = _vtd_setup()
    d.translate(0x10_0000, WRITE)
    leaf = t.entry_gpa(0x10_0000, 0, create=False)
    g.w64(leaf, g.r64(leaf) & ~RWB)                               # made read-only
    assert d.translate(0x10_0000, WRITE).hit                      # still writable (stale)
    d.inv_range(0x10_0000, PAGE)
    assert fault_of(d.translate, 0x10_0000, WRITE).reason == F_PERMISSION


def test_iotlb_invalidation_argument_rules():
    g, t, pages, d = _vtd_setup()
    for args, err in (((0x10_0001, 1), errno.EINVAL), ((0x1000, (1 << 64) - 1), errno.EINVAL),
                      ((0, 1, 2), errno.EOPNOTSUPP)):
        with pytest.raises(OSError) as ei:
            d.inv_vtd(*args)
        assert ei.value.errno == err
    assert d.inv_vtd(0x10_0000, 0) == 0


def test_iotlb_pasid_scoping():
    g, t, pages, d = _vtd_setup()
    for pasid in (NO_PASID, 1, 2):
        d.translate(0x10_0000, READ, pasid=pasid)
    new = g.alloc()
    t.map(0x10_0000, new)
    assert d.inv_pasid(1) == 1
    assert d.translate(0x10_0000, pasid=1).gpa == new
    assert d.translate(0x10_0000, pasid=2).gpa == pages[0]          # stale
    assert d.inv_range(0x10_0000, PAGE, pasid=NO_PASID) == 1
    assert d.translate(0x10_0000).gpa == new
    assert d.translate(0x10_0000, pasid=2).gpa == pages[0]
    assert d.inv_vtd(0x10_0000, 1) >= 1                             # every PASID of the HWPT
    assert d.translate(0x10_0000, pasid=2).gpa == new


def test_iotlb_lru_eviction_at_capacity():
    g, t, pages, d = _vtd_setup(capacity=2)
    d.translate(0x10_0000)
    d.translate(0x10_1000)
    d.translate(0x10_0000)                      # page 0 is now the most recent
    d.translate(0x10_2000)                      # evicts page 1
    s = d.stats()
    assert (s["entries"], s["evictions"]) == (2, 1)
    new = g.alloc()
    for i in range(3):
        t.map(0x10_0000 + i * PAGE, new)
    assert d.translate(0x10_0000).gpa == pages[0]       # kept: stale
    assert d.translate(0x10_1000).gpa == new            # evicted: walked fresh
    d.set_capacity(1)
    assert d.stats()["entries"] == 1
    assert d.translate(0x10_1000).hit                   # the most recent survived
    d.set_capacity(0)
    assert not d.translate(0x10_1000).hit and d.stats()["entries"] == 0


def test_iotlb_stage2_change_drops_everything():
    g, t, pages, d = _vtd_setup()
    for i in range(4):
        d.translate(0x10_0000 + i * PAGE, READ, pasid=i)
    assert d.s2_changed() == 4
    assert not d.translate(0x10_0000, pasid=0).hit


def test_iotlb_forget_dirty():
    g, t, pages, d = _vtd_setup()
    d.translate(0x10_0000, WRITE)
    assert d.forget_dirty() == 1
    assert not d.translate(0x10_0000, WRITE).hit
    assert d.translate(0x10_0000, READ).hit


def test_smmu_iotlb_asid_va_and_global():
    g = Guest()
    s = Smmu(g, ncd=3)
    data, new = g.alloc(), g.alloc()
    for ssid in (1, 2):
        s.tables[ssid].map(0x1000, data)
        s.tables[ssid].map(0x2000, data, attrs=PAGE_D | NG)
    d = s.domain()
    for ssid in (1, 2):
        for va in (0x1000, 0x2000):
            d.translate(va, READ, pasid=ssid)
    for ssid in (1, 2):
        s.tables[ssid].map(0x1000, new)
        s.tables[ssid].map(0x2000, new, attrs=PAGE_D | NG)
    # TLBI_NH_ASID(2) = SSID 1's ASID: non-global entries only
    assert d.inv_asid(2) == 1
    assert d.translate(0x2000, pasid=1).gpa == new
    assert d.translate(0x1000, pasid=1).gpa == data               # global: stale
    assert d.translate(0x2000, pasid=2).gpa == data               # other ASID: stale
    # TLBI_NH_VA(ASID 3, 0x1000): that ASID's and global entries at the VA
    assert d.inv_va(0x1000, PAGE, asid=3) == 2
    assert d.translate(0x1000, pasid=1).gpa == new
    assert d.translate(0x2000, pasid=2).gpa == data
    assert d.inv_va(0x2000, PAGE, asid=ANY_ASID) >= 1             # TLBI_NH_VAA
    assert d.translate(0x2000, pasid=2).gpa == new


def _cmd(op, asid=0, num=0, scale=0, vmid=0, ssid=0, sid=0, ssv=0, leaf=0, ttl=0, tg=0,
         addr=0, size=0, glob=0):
    c0 = op | glob << 9 | ssv << 11 | num << 12 | scale << 20 | vmid << 32 | asid << 48
    if op in (0x05, 0x40):
        c0 |= ssid << 12 | sid << 32
    if op == 0x06:
        c0 |= sid << 32
    c1 = leaf | ttl << 8 | tg << 10 | addr | size
    return c0, c1


def test_smmu_raw_commands_validation():
    from cext.nested import SMMU_ATS, SMMU_RIL, SMMU_SSID
    g = Guest()
    s = Smmu(g, ncd=1, cdmax=0)
    d = s.domain()
    bad = [
        (0x46, 0),                                     # CMD_SYNC: refused
        (0x03 | 1 << 32, 0),                           # CFGI_STE
        _cmd(0x10, asid=1),                            # ASID in NH_ALL
        (_cmd(0x05)[0] | 1 << 11, 0),                  # SSV in CFGI_CD
        _cmd(0x11, asid=0x100),                        # 16-bit ASID without ASID16
        _cmd(0x12, tg=1),                              # TG != 0, NUM = SCALE = TTL = 0
        _cmd(0x12, num=1),                             # TG = 0 with NUM
        _cmd(0x12, tg=1, num=1, scale=0x20),           # SCALE[5] without DS
        _cmd(0x12, tg=2, ttl=1, num=1),                # 16K TTL=1 without DS
        _cmd(0x40, size=53),                           # ATC_INV Size > 52
        (0x30, 1),                                     # NSNH_ALL with dword1 set
    ]
    caps = SMMU_RIL | SMMU_ATS | SMMU_SSID
    for c0, c1 in bad:
        with pytest.raises(OSError) as ei:
            d.smmu_cmd(c0, c1, caps)
        assert ei.value.errno == errno.EIO, hex(c0)
    with pytest.raises(OSError):
        d.smmu_cmd(*_cmd(0x12, tg=1, num=1), caps=0)  # range without RIL
    with pytest.raises(OSError):
        d.smmu_cmd(*_cmd(0x40), caps=SMMU_RIL)        # ATC_INV without ATS
    for c in (_cmd(0x10, vmid=5), _cmd(0x11, asid=3), _cmd(0x12, asid=3, addr=0x5000, leaf=1),
              _cmd(0x13, tg=1, num=3, ttl=3, addr=0x5000), _cmd(0x30), _cmd(0x05, ssid=1, sid=9),
              _cmd(0x06, sid=9), _cmd(0x40, sid=9, size=52)):
        assert d.smmu_cmd(*c, caps=caps) >= 0


def test_smmu_raw_commands_semantics():
    g = Guest()
    s = Smmu(g, ncd=2)
    t = s.tables[1]                                    # SSID 1, ASID 2
    data = g.alloc()
    for i in range(8):
        t.map(i * PAGE, data, attrs=PAGE_D | NG)
    d = s.domain()
    def fill():
        for i in range(8):
            d.translate(i * PAGE, READ, pasid=1)
    fill()
    # TLBI_NH_VA range: (NUM+1) << SCALE granules of 4 KiB from 0x2000: 2 pages
    assert d.smmu_cmd(*_cmd(0x12, asid=2, tg=1, num=1, addr=0x2000)) == 2
    assert d.smmu_cmd(*_cmd(0x12, asid=5, addr=0x4000)) == 0     # other ASID
    assert d.smmu_cmd(*_cmd(0x13, addr=0x4000)) == 1              # VAA: any ASID
    assert d.smmu_cmd(*_cmd(0x11, asid=2)) == 5                   # NH_ASID: the rest
    fill()
    assert d.smmu_cmd(*_cmd(0x30)) == 8                           # NSNH_ALL
    assert d.stats()["cd_entries"] == 1
    assert d.smmu_cmd(*_cmd(0x05, ssid=1, sid=3)) == 1            # CFGI_CD
    assert d.stats()["cd_entries"] == 0


def test_smmu_event_records():
    from cext.nested import smmu_event
    g = Guest()
    s = Smmu(g, ncd=2, cdmax=1)
    t = s.tables[1]
    data = g.alloc()
    t.map(0x1000, data, attrs=3 | AF | AP1 | AP2)
    t.map(0x2000, GPA_BASE + 700 * PAGE)
    d = s.domain()
    f = fault_of(d.translate, 0x1000, WRITE | PRIV, pasid=1)
    e = smmu_event(f, sid=0x42, pasid=1)
    assert e[0] == 0x13 | 1 << 11 | 1 << 12 | 0x42 << 32          # F_PERMISSION, SSV, SSID 1
    assert e[1] == 1 << 33 | 2 << 40 and e[2] == 0x1000 and e[3] == 0   # PnU, write, CLASS IN
    f = fault_of(d.translate, 0x2000, READ, pasid=1)
    e = smmu_event(f, sid=7, pasid=1)
    assert e[0] & 0xFF == 0x10 and e[1] == 1 << 35 | 1 << 39 | 2 << 40    # RnW, S2
    assert e[3] == GPA_BASE + 700 * PAGE
    f = fault_of(d.translate, 0x1000, READ, pasid=2)
    assert smmu_event(f, sid=7, pasid=2) == [0x08 | 1 << 11 | 2 << 12 | 7 << 32, 0, 0, 0]
    f = fault_of(d.translate, 0x5000, READ, pasid=1)
    e = smmu_event(f, sid=7)
    assert e[0] == 0x10 | 7 << 32 and e[1] == 1 << 35 | 1 << 40 and e[2] == 0x5000


def test_smmu_cd_cache_and_cfgi_cd():
    g = Guest()
    s = Smmu(g, ncd=2)
    old_t = s.tables[1]
    data, new = g.alloc(), g.alloc()
    old_t.map(0x1000, data, attrs=PAGE_D | NG)
    old_t.map(0x3000, data, attrs=PAGE_D | NG)
    d = s.domain()
    d.translate(0x1000, pasid=1)
    # the guest points CD 1 at new tables (same ASID) without CFGI_CD
    new_t = s.set_cd(1, asid=2)
    new_t.map(0x1000, new, attrs=PAGE_D | NG)
    new_t.map(0x3000, new, attrs=PAGE_D | NG)
    assert d.translate(0x3000, pasid=1).gpa == data               # old TTB0 still used
    assert d.inv_cd(1) == 1                                       # CFGI_CD: CD only
    assert d.translate(0x1000, pasid=1).gpa == data               # TLB entries stay (ref §5.2)
    d.inv_asid(2)
    assert d.translate(0x1000, pasid=1).gpa == new
    assert d.translate(0x3000, pasid=1).gpa == new
    # a new ASID in the CD: old-ASID entries no longer match after CFGI_CD
    d.translate(0x1000, pasid=1)
    s.set_cd(1, tables=old_t, asid=7)
    assert d.translate(0x1000, pasid=1).gpa == new                # CD still cached
    d.inv_cd_all()
    r = d.translate(0x1000, pasid=1)
    assert (r.gpa, r.asid, r.hit) == (data, 7, False)


def test_translate_range_merges_and_faults():
    g, t, pages, d = _vtd_setup()
    segs = d.translate_range(0x10_0000 + 0x800, 2 * PAGE, READ)
    assert sum(n for _, n in segs) == 2 * PAGE
    assert segs[0] == (g.hva(pages[0]) + 0x800, 0x800)
    with pytest.raises(NestFault) as ei:
        d.translate_range(0x10_3000, 2 * PAGE, READ)
    assert ei.value.iova == 0x10_4000 and ei.value.reason == F_TRANSLATION
    assert d.translate_batch([0x10_0000, 0x10_1000]) == [g.hva(pages[0]), g.hva(pages[1])]


def test_bad_arguments():
    g, t, pages, d = _vtd_setup()
    for acc in (0, 16, PRIV):
        with pytest.raises(OSError) as ei:
            d.translate(0x10_0000, acc)
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        NestedDomain.vtd(0, mem=g.mem, addr_width=39)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        d.set_capacity(1 << 25)
    with pytest.raises(OSError) as ei:
        d.translate_range((1 << 64) - PAGE, 2 * PAGE)
    assert ei.value.errno == errno.EINVAL


def test_closed_parent_is_refused():
    g, t, pages, d = _vtd_setup()
    d.translate(0x10_0000)
    g.s2.close()
    with pytest.raises(ValueError):
        d.translate(0x10_0000)
    d.set_s2(None)                      # identity: GPA = HVA, here unreadable
    assert d.stats()["entries"] == 0
    f = fault_of(d.translate, 0x10_0000)
    assert (f.stage, f.reason) == (2, lib.IOFS_NEST_F_MEMORY)
    d.close()
    with pytest.raises(ValueError):
        d.translate(0x10_0000)


def test_process_memory_accessor():
    """Stage-2 outputs as tagged addresses in a process (here: ourselves)."""
    import os
    g = Guest(s2=False)
    t_root = g.buf
    raw, buf = aligned_buffer(4 * PAGE)
    base = int(ffi.cast("uintptr_t", buf))
    tag = 5
    s2 = PageTable(ias_bits=48)
    s2.map(0, tag << 57 | base, 4 * PAGE, RW)
    ents = ffi.cast("uint64_t *", buf)
    # 4-level VT-d tables in pages 0..3 of buf (GPA = offset), leaf -> GPA 0x3000
    ents[0] = 0x1000 | TBL
    ents[512] = 0x2000 | TBL
    ents[1024] = 0x3000 | TBL
    ents[1536 + 7] = 0x3000 | TBL
    mem = Memory.process({tag: os.getpid()})
    d = NestedDomain.vtd(0, s2=s2, mem=mem)
    r = d.translate(0x7123, WRITE)
    assert r.out == (tag << 57 | base + 0x3123)
    assert ents[1536 + 7] & (A | D) == A | D
    del t_root
    bad = NestedDomain.vtd(0, s2=s2, mem=Memory.process({}))
    f = fault_of(bad.translate, 0x7123)
    assert (f.stage, f.reason) == (2, lib.IOFS_NEST_F_MEMORY)


# ---------------------------------------------------------------- C vs reference

NPAGES = 12


_keep = []


def _mk_env(data, s2kind):
    """A guest of NPAGES at GPA 0 (identity S2) or GPA_BASE (an S2 with
    some pages missing or read-only). Returns (buf, gbase, s2)."""
    raw, buf = aligned_buffer(NPAGES * PAGE)
    _keep.append(raw)
    if s2kind == "identity":
        return buf, 0, None
    hva0 = int(ffi.cast("uintptr_t", buf))
    s2 = PageTable(ias_bits=48)
    for i in range(NPAGES):     # GPA page i = buffer page i (scrambling: unit tests)
        mode = data.draw(st.sampled_from([RW] * 6 + [READ, None]))
        if mode is not None:
            s2.map(GPA_BASE + i * PAGE, hva0 + i * PAGE, PAGE, mode)
    return buf, GPA_BASE, s2


def _entry(data, gbase, level_bits):
    page = data.draw(st.integers(0, NPAGES + 1))
    addr = gbase + page * PAGE
    return addr | _bits(data, level_bits)


VTD_BITS = [(0, 90), (1, 70), (2, 80), (5, 20), (6, 10), (7, 25), (10, 5), (63, 10),
            (50, 4), (51, 3), (13, 4), (21, 4)]
ARM_BITS = [(0, 90), (1, 70), (6, 75), (7, 25), (10, 80), (11, 30), (51, 15), (53, 10),
            (54, 10), (59, 5), (60, 5), (61, 8), (62, 8), (40, 3)]


def _fill(data, buf, gbase, bitset, n):
    """n random entries at random places; returns the indices used per page."""
    ents = ffi.cast("uint64_t *", buf)
    used = []
    for _ in range(n):
        page = data.draw(st.integers(0, NPAGES - 1))
        idx = data.draw(st.sampled_from([0, 1, 2, 511, 256] + list(range(3, 8))))
        ents[page * 512 + idx] = _entry(data, gbase, bitset)
        used.append(idx)
    return used


def _iova(data, used, top_bits):
    v = 0
    for shift in range(12, top_bits, 9):
        v |= data.draw(st.sampled_from(used + [data.draw(st.integers(0, 511))])) << shift
    v |= data.draw(st.integers(0, PAGE - 1))
    return v & ((1 << top_bits) - 1)


def _bits(data, table):
    """Random entry bits, each with its weight in percent (one draw)."""
    rng = data.draw(st.randoms(use_true_random=False))
    v = 0
    for bit, weight in table:
        if rng.randrange(100) < weight:
            v |= 1 << bit
    return v


VTD_CHAIN_TBL = [(0, 96), (1, 85), (2, 90), (5, 30), (10, 10), (63, 8), (7, 3), (50, 2)]
VTD_CHAIN_LEAF = [(0, 96), (1, 85), (2, 90), (5, 30), (6, 25), (10, 10), (63, 10), (51, 2),
                  (14, 2)]


def _vtd_chain(data, buf, gbase, root_page, iova, levels):
    """Entries along iova's path: mostly valid, sometimes a PS leaf."""
    ents = ffi.cast("uint64_t *", buf)
    page = root_page
    for L in range(levels - 1, -1, -1):
        if not 0 <= page < NPAGES:
            return
        idx = (iova >> (12 + 9 * L)) & 511
        leaf = L == 0 or (L in (1, 2) and data.draw(st.integers(0, 9)) < 2)
        nxt = data.draw(st.integers(0, NPAGES))
        if leaf:
            addr = data.draw(st.sampled_from([gbase + nxt * PAGE, gbase, 0]))
            e = addr | _bits(data, VTD_CHAIN_LEAF) | (0x80 if L else 0)
        else:
            e = gbase + nxt * PAGE | _bits(data, VTD_CHAIN_TBL)
        ents[page * 512 + idx] = e
        if leaf:
            return
        page = nxt


ARM_CHAIN_TBL = [(0, 97), (1, 95), (59, 5), (60, 5), (61, 8), (62, 8), (40, 2)]
ARM_CHAIN_LEAF = [(0, 97), (6, 85), (7, 25), (10, 85), (11, 40), (51, 20), (53, 10), (54, 10),
                  (45, 2)]


def _arm_chain(data, buf, gbase, root_page, va, start):
    ents = ffi.cast("uint64_t *", buf)
    page = root_page
    for L in range(start, 4):
        if not 0 <= page < NPAGES:
            return
        idx = (va >> (12 + 9 * (3 - L))) & 511
        leaf = L == 3 or (L in (1, 2) and data.draw(st.integers(0, 9)) < 2)
        nxt = data.draw(st.integers(0, NPAGES))
        if leaf:
            addr = data.draw(st.sampled_from([gbase + nxt * PAGE, gbase, 1 << 44]))
            e = addr | _bits(data, ARM_CHAIN_LEAF) | (2 if L == 3 else 0)
        else:
            e = gbase + nxt * PAGE | _bits(data, ARM_CHAIN_TBL)
        ents[page * 512 + idx] = e
        if leaf:
            return
        page = nxt


def _compare(d, cfg, buf, gbase, s2, pasid, iova, acc):
    """Run the C walk on buf and the reference on a copy; compare everything."""
    size = NPAGES * PAGE
    before = bytes(ffi.buffer(buf, size))
    try:
        r = d.walk(iova, acc, pasid=pasid)
        c_out = ("ok", (r.out, r.gpa, r.page_size, r.s1_size, r.perms, r.asid, r.s1_level))
    except NestFault as f:
        c_out = ("fault", (f.stage, f.reason, -f.errno, f.level, f.cls, f.addr))
    after_c = bytes(ffi.buffer(buf, size))
    ffi.buffer(buf, size)[:] = before
    if s2 is None:
        mem = refnested.BufferMem(buf, 0, size)
    else:
        mem = refnested.BufferMem(buf, int(ffi.cast("uintptr_t", buf)), size)
    kind, v = refnested.walk(cfg, s2, mem, pasid, iova, acc)
    ref_out = (kind, tuple(v))
    after_ref = bytes(ffi.buffer(buf, size))
    event(c_out[0] if c_out[0] == "ok" else f"fault stage {c_out[1][0]} reason {c_out[1][1]}")
    assert c_out == ref_out, (hex(iova), acc)
    assert after_c == after_ref


ACCESSES = st.sampled_from([READ, WRITE, RW, READ | EXEC, READ | PRIV, WRITE | PRIV,
                            READ | EXEC | PRIV])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), s2kind=st.sampled_from(["identity", "s2"]),
       levels=st.sampled_from([4, 5]), flags=st.integers(0, 7), fs1gp=st.booleans(),
       haw=st.sampled_from([39, 46, 48, 52]))
def test_vtd_c_matches_reference(data, s2kind, levels, flags, fs1gp, haw):
    buf, gbase, s2 = _mk_env(data, s2kind)
    used = _fill(data, buf, gbase, VTD_BITS, data.draw(st.integers(0, 16)))
    root = gbase + data.draw(st.integers(0, NPAGES)) * PAGE + data.draw(
        st.sampled_from([0, 0, 0, 0x123]))
    aw = 57 if levels == 5 else 48
    mem = Memory.local(buf, origin=0 if s2 is None else None, size=NPAGES * PAGE)
    d = NestedDomain.vtd(root, s2=s2, mem=mem, addr_width=aw, flags=flags, fs1gp=fs1gp,
                         haw=haw, capacity=0)
    cfg = dict(format=refnested.FMT_VTD, pgtbl_addr=root, addr_width=aw, vtd_flags=flags,
               fs1gp=fs1gp, haw=haw)
    root_page = (root - gbase) // PAGE
    for _ in range(4):
        iova = _iova(data, used, aw - 1)
        if data.draw(st.booleans()):
            iova |= ~((1 << (aw - 1)) - 1) & ((1 << 64) - 1)     # canonical upper half
        if data.draw(st.integers(0, 19)) == 0:
            iova ^= data.draw(st.sampled_from([1 << 63, 1 << (aw - 1), 1 << 56]))
        _vtd_chain(data, buf, gbase, root_page, iova, levels)
        for _ in range(2):
            _compare(d, cfg, buf, gbase, s2, NO_PASID, iova, data.draw(ACCESSES))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), s2kind=st.sampled_from(["identity", "s2"]), httu=st.booleans(),
       oas=st.sampled_from([40, 44, 48]))
def test_smmu_c_matches_reference(data, s2kind, httu, oas):
    buf, gbase, s2 = _mk_env(data, s2kind)
    ents = ffi.cast("uint64_t *", buf)
    used = _fill(data, buf, gbase, ARM_BITS, data.draw(st.integers(0, 12)))
    cdpage = data.draw(st.integers(0, 1))
    ctx = gbase + cdpage * PAGE + data.draw(st.sampled_from([0, 0, 0, 0x40]))
    s1fmt = data.draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    cdmax = data.draw(st.sampled_from([0, 0, 1, 3, 8, 11, 11]))
    ste = ste_of(ctx, cdmax=cdmax, s1fmt=s1fmt,
                 config=data.draw(st.sampled_from([5] * 12 + [4, 0, 6])),
                 s1dss=data.draw(st.sampled_from([2, 2, 2, 0, 1, 3])),
                 v=data.draw(st.integers(0, 29)) > 0)
    mem = Memory.local(buf, origin=0 if s2 is None else None, size=NPAGES * PAGE)
    d = NestedDomain.smmu(ste, s2=s2, mem=mem, oas=oas, httu=httu, capacity=0)
    cfg = dict(format=refnested.FMT_SMMU, ste=ste, haw=oas, smmu_httu=httu)
    for _ in range(4):
        pasid = data.draw(st.sampled_from([NO_PASID, NO_PASID, 0, 1, 2, 5, 7, 200, 1500, 5000]))
        ssid = 0 if pasid == NO_PASID else pasid
        # where this SSID's CD lives (GPA offset from gbase)
        if cdmax == 0 or s1fmt in (0, 3):
            cd_off = ctx - gbase + 64 * ssid
        else:
            split = 6 if s1fmt == 1 else 10
            l2page = data.draw(st.integers(2, NPAGES))
            l1_off = ctx - gbase + 8 * (ssid >> split)
            if l1_off + 8 <= NPAGES * PAGE:
                ents[l1_off // 8] = (gbase + l2page * PAGE) | (data.draw(st.integers(0, 9)) > 0)
            cd_off = l2page * PAGE + 64 * (ssid & ((1 << split) - 1))
        t0sz = data.draw(st.sampled_from([16, 16, 16, 20, 25, 30, 34, 39, 12, 40]))
        root_page = data.draw(st.integers(0, NPAGES))
        if cd_off + 16 <= NPAGES * PAGE:
            ents[cd_off // 8] = cd0_of(
                t0sz=t0sz, asid=data.draw(st.integers(0, 0xFFFF)),
                ips=data.draw(st.sampled_from([0, 2, 5, 5, 5, 6, 7])),
                tbi=data.draw(st.booleans()), affd=data.draw(st.booleans()),
                ha=data.draw(st.booleans()), hd=data.draw(st.booleans()),
                wxn=data.draw(st.integers(0, 4)) == 0,
                v=data.draw(st.integers(0, 19)) > 0, aa64=data.draw(st.integers(0, 19)) > 0,
                tg0=data.draw(st.sampled_from([0] * 18 + [1, 2])),
                epd0=data.draw(st.integers(0, 19)) == 0)
            ents[cd_off // 8 + 1] = gbase + root_page * PAGE + data.draw(
                st.sampled_from([0, 0, 0, 0x40]))
        ias = 64 - t0sz
        va = _iova(data, used, min(ias, 48))
        if data.draw(st.integers(0, 9)) == 0:
            va |= data.draw(st.sampled_from([0xAB << 56, 1 << 47, 1 << 40, 1 << ias]))
        start = 0 if ias > 39 else 1 if ias > 30 else 2
        _arm_chain(data, buf, gbase, root_page, va, start)
        for _ in range(2):
            _compare(d, cfg, buf, gbase, s2, pasid, va, data.draw(ACCESSES))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_iotlb_never_serves_what_no_walk_gave(data):
    """Against a model: with no guest changes, a cached translation equals a
    fresh walk; after random invalidations and capacity changes too."""
    g = Guest(npages=24)
    t = VtdTables(g)
    targets = [g.alloc() for _ in range(4)]
    for i in range(16):
        t.map(i * PAGE, targets[i % 4], flags=data.draw(st.sampled_from([TBL, P | US, TBL | XD])))
    d = vtd(g, t, capacity=data.draw(st.integers(0, 8)))
    for _ in range(30):
        op = data.draw(st.integers(0, 5))
        if op == 0:
            d.inv_vtd(data.draw(st.integers(0, 15)) * PAGE, data.draw(st.integers(0, 4)))
        elif op == 1:
            d.set_capacity(data.draw(st.integers(0, 8)))
        else:
            iova = data.draw(st.integers(0, 16 * PAGE - 1))
            acc = data.draw(ACCESSES.filter(lambda a: not a & PRIV))
            try:
                r = d.translate(iova, acc)
            except NestFault as f:
                with pytest.raises(NestFault) as ei:
                    d.walk(iova, acc)
                assert (ei.value.reason, ei.value.stage) == (f.reason, f.stage)
                continue
            w = d.walk(iova, acc)
            assert (r.out, r.gpa, r.perms) == (w.out, w.gpa, w.perms)
        s = d.stats()
        assert s["entries"] <= s["capacity"]


# ---------------------------------------------------------------- sanitizers

SAN_HARNESS = r"""
#include "nested.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t s = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static uint64_t pick(const uint64_t *v, int n) { return v[rnd() % n]; }

#define NP 16
int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 20000;
    uint8_t *buf = aligned_alloc(4096, NP * 4096);
    uint64_t *ents = (uint64_t *)buf;
    static const uint64_t edges[] = {0, 1, 0xfff, 0x1000, 0x7fffffffffffull, 0x800000000000ull,
        0xffff800000000000ull, 0x00ffffffffffffffull, 0x0100000000000000ull, ~0ull, ~0ull - 0xfff,
        0x8000000000000000ull, 0xab00000000005000ull};
    for (long it = 0; it < iters; it++) {
        uint64_t base = (rnd() & 1) ? 0 : 0x40000000;      /* GPA of buffer page 0 */
        struct iofs_pt *s2 = NULL;
        if (base) {
            s2 = iofs_pt_new(12, 9, 48, 2);
            for (int i = 0; i < NP; i++)
                if (rnd() % 8)
                    iofs_pt_map(s2, base + i * 4096ull, (uint64_t)(uintptr_t)buf + i * 4096ull,
                                4096, (rnd() % 6) ? 3 : 1, 0);
        }
        for (int i = 0; i < NP * 512; i++)
            ents[i] = (rnd() % 4) ? 0 : ((rnd() % 3 ? base + (rnd() % (NP + 2)) * 4096 : rnd())
                                         | (rnd() & 0xfff) | (rnd() & 0xfff0000000000000ull));
        struct iofs_nest_mem m = {0};
        m.kind = IOFS_NEST_MEM_LOCAL;
        m.local = buf;
        m.origin = base ? (uint64_t)(uintptr_t)buf : 0;
        m.size = NP * 4096;
        if (rnd() % 16 == 0) m.origin = ~0ull - (rnd() % 8192);
        struct iofs_nest_cfg c = {0};
        c.format = (rnd() & 1) ? IOFS_NEST_FMT_VTD : IOFS_NEST_FMT_SMMU;
        c.vtd_flags = rnd() & 7;
        c.pgtbl_addr = (rnd() % 4) ? base + (rnd() % (NP + 1)) * 4096 + (rnd() & 0xfff) : rnd();
        c.addr_width = (rnd() & 1) ? 48 : 57;
        c.fs1gp = rnd() & 1;
        c.haw = 32 + rnd() % 21;
        c.smmu_httu = rnd() & 1;
        c.ste[0] = (rnd() % 4) ? (1 | 5 << 1 | ((rnd() % 4) << 4) | (base + (rnd() % NP) * 4096
                    + (rnd() & 0xfc0)) | ((rnd() % 32) << 59)) : rnd();
        c.ste[1] = rnd();
        for (int k = 0; k < 4 && c.format == IOFS_NEST_FMT_SMMU; k++) {
            uint64_t *cd = (uint64_t *)(buf + (rnd() % NP) * 4096 + (rnd() % 64) * 64);
            cd[0] = (rnd() % 4) ? ((16 + rnd() % 30) | 1ull << 31 | 1ull << 41 | (rnd() % 8) << 32
                                   | (rnd() & 0xffff000c00000000ull)) : rnd();
            cd[1] = (rnd() % 4) ? base + (rnd() % NP) * 4096 : rnd();
        }
        /* Half of the domains get valid 4-level chains for a few IOVAs
         * (VT-d 48-bit and VMSAv8 T0SZ 16 index alike), so the IOTLB and
         * A/D paths run too. */
        uint64_t good[4];
        int ngood = 0;
        if (rnd() & 1) {
            int smmu = c.format == IOFS_NEST_FMT_SMMU;
            c.addr_width = 48;
            c.haw = 48;
            c.pgtbl_addr = base + 4096;
            if (smmu) {
                c.ste[0] = 1 | 5 << 1 | base;             /* linear, one CD at page 0 */
                c.ste[1] = 0;
                ents[0] = 16 | 1ull << 31 | 1ull << 41 | 5ull << 32 | 7ull << 48;
                ents[1] = base + 4096;
            }
            for (; ngood < 4; ngood++) {
                uint64_t iova = (rnd() & 0x7ffffffff000ull) | (rnd() & 0xfff);
                if (!smmu && (rnd() & 1))
                    iova |= 0xffff800000000000ull;
                good[ngood] = iova;
                uint64_t t = 1;                           /* buffer page of the table */
                for (int L = 3; L >= 0; L--) {
                    uint64_t nxt = 2 + rnd() % (NP - 2);
                    uint64_t fl = smmu ? (L ? 3 : (3 | 1 << 10 | 1 << 6 | (rnd() & 1) << 7))
                                       : (7 | (rnd() & 0x60));
                    ents[t * 512 + ((iova >> (12 + 9 * L)) & 511)] = (base + nxt * 4096) | fl;
                    t = nxt;
                }
            }
        }
        struct iofs_nest *d = iofs_nest_new(&c, s2, &m, rnd() % 9);
        if (!d) { iofs_pt_free(s2); continue; }
        for (int q = 0; q < 40; q++) {
            uint64_t iova = ngood && (rnd() % 4) ? good[rnd() % ngood] + (rnd() % 2) * 8
                          : (rnd() % 3) ? pick(edges, 13) + (rnd() % 3) * 4096 : rnd();
            uint32_t pasid = (rnd() % 3) ? IOFS_NEST_NO_PASID : (uint32_t)rnd();
            unsigned acc = (rnd() % 4) ? 1 + rnd() % 3 : rnd() & 31;
            struct iofs_nest_result r;
            struct iofs_nest_fault f;
            struct iofs_seg segs[4];
            switch (rnd() % 11) {
            case 0: {
                uint64_t evt[4];
                if (iofs_nest_walk(d, pasid, iova, acc, &r, &f))
                    iofs_nest_smmu_event(&f, (uint32_t)rnd(), pasid, evt);
                break;
            }
            case 1: iofs_nest_translate_range(d, pasid, iova, rnd() % 20000, acc, segs, 4, &f); break;
            case 2: iofs_nest_inv_vtd(d, iova, pick(edges, 13), rnd() & 3); break;
            case 3: iofs_nest_inv_range(d, rnd() & 1, pasid, iova, pick(edges, 13)); break;
            case 4: iofs_nest_inv_va(d, (uint32_t)rnd(), iova, pick(edges, 13)); break;
            case 5: iofs_nest_set_capacity(d, rnd() % 9); break;
            case 6: iofs_nest_inv_cd(d, pasid); iofs_nest_inv_asid(d, rnd() & 0xffff); break;
            case 7: {
                static const uint64_t ops[] = {0x10, 0x11, 0x12, 0x13, 0x30, 0x40, 0x05, 0x06};
                uint64_t cmd[2] = {pick(ops, 8) | (rnd() & ~0xffull & rnd()), rnd() & rnd()};
                iofs_nest_smmu_cmd(d, cmd, (uint32_t)rnd() & 31);
                break;
            }
            default: iofs_nest_translate(d, pasid, iova, acc, &r, NULL); break;
            }
        }
        struct iofs_nest_stats st;
        iofs_nest_stats(d, &st);
        if (st.entries > st.capacity) { fprintf(stderr, "entries > capacity\n"); return 1; }
        iofs_nest_free(d);
        iofs_pt_free(s2);
    }
    free(buf);
    puts("ok");
    return 0;
}
"""


def test_c_under_asan_ubsan(tmp_path):
    """Random tables, configurations, addresses at the edges of the address
    space and random invalidations, with nested.c built under
    AddressSanitizer and UBSan (any report aborts)."""
    import shutil
    import subprocess
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    here = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "cext")
    src = tmp_path / "h.c"
    src.write_text(SAN_HARNESS)
    exe = tmp_path / "h"
    flags = ["-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{here}"]
    srcs = [str(src)] + [f"{here}/{p}.c" for p in ("nested", "pagetable", "procmem")]
    cp = subprocess.run([cc, *flags, "-o", str(exe), *srcs], capture_output=True, text=True)
    if cp.returncode and any(w in cp.stderr for w in ("sanitize", "asan", "ubsan")):
        pytest.skip("sanitizer runtime not available: " + cp.stderr[-300:])
    assert cp.returncode == 0, cp.stderr
    env = dict(__import__("os").environ, ASAN_OPTIONS="detect_leaks=1",
               UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe), "6000"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_iotlb_against_model_with_guest_changes(data):
    """The IOTLB contract (ref §5.2, §5.3) as a model: the guest edits its
    tables without telling anyone, and invalidates now and then; a request
    is served from a model entry when one exists that allows it (stale or
    not: the point), otherwise it equals a fresh walk of the tables as they
    are now, and refills. Capacity with LRU, invalidation by range and by
    PASID, all, and pieces of a 2 MiB leaf going together."""
    from collections import OrderedDict
    g = Guest(npages=32)
    t = VtdTables(g)
    targets = [g.alloc() for _ in range(4)]
    npg = 8
    for i in range(npg):
        t.map(i * PAGE, targets[i % 4])
    g.s2.map(2 * GiB, UVA, 2 * MiB, RW)
    t.map(0x20_0000, 2 * GiB, level=1)                 # one 2 MiB leaf
    cap = data.draw(st.integers(1, 6))
    d = vtd(g, t, capacity=cap)
    cfg = dict(format=refnested.FMT_VTD, pgtbl_addr=t.root, addr_width=48, vtd_flags=0,
               fs1gp=1, haw=52)
    mem = refnested.BufferMem(g.buf, g.hva0, g.npages * PAGE)
    model = OrderedDict()        # (pasid, page) -> (out_page, perms, dirty, first, last)
    iovas = [i * PAGE for i in range(npg)] + [0x20_0000, 0x20_1000, 0x3F_F000]
    for _ in range(40):
        op = data.draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 4]))
        if op == 0:                                    # guest remaps / unmaps / write-protects
            i = data.draw(st.integers(0, npg - 1))
            how = data.draw(st.integers(0, 2))
            leaf = t.entry_gpa(i * PAGE, 0, create=False)
            if how == 0:
                g.w64(leaf, targets[data.draw(st.integers(0, 3))] | TBL)
            elif how == 1:
                g.w64(leaf, 0)
            else:
                g.w64(leaf, g.r64(leaf) & ~RWB)
        elif op == 1:
            addr = data.draw(st.sampled_from(iovas))
            n = data.draw(st.integers(0, 3))
            dropped = d.inv_vtd(addr, n)
            first, last = addr >> 12, (addr >> 12) + n - 1
            gone = [k for k, v in model.items() if n and v[3] <= last and v[4] >= first]
            for k in gone:
                del model[k]
            assert dropped == len(gone)
        elif op == 2:
            p = data.draw(st.sampled_from([NO_PASID, 1]))
            assert d.inv_pasid(p) == len([k for k in model if k[0] == p])
            for k in [k for k in model if k[0] == p]:
                del model[k]
        elif op == 3:
            cap = data.draw(st.integers(0, 6))
            d.set_capacity(cap)
            while len(model) > cap:
                model.popitem(last=False)
        else:
            iova = data.draw(st.sampled_from(iovas)) + data.draw(st.integers(0, PAGE - 1))
            acc = data.draw(st.sampled_from([READ, WRITE, RW]))
            pasid = data.draw(st.sampled_from([NO_PASID, 1]))
            key = (pasid, iova >> 12)
            m = model.get(key)
            try:
                r = d.translate(iova, acc, pasid=pasid)
            except NestFault as f:
                kind, v = refnested.walk(cfg, g.s2, mem, pasid, iova, acc)
                assert kind == "fault" and (v.stage, v.reason) == (f.stage, f.reason)
                assert m is None or m[1] & acc != acc or (acc & WRITE and not m[2])
                continue
            if m is not None and m[1] & acc == acc and (not acc & WRITE or m[2]):
                assert r.hit and r.out == m[0] + (iova & 0xFFF)       # served, maybe stale
                kind, v = refnested.walk(cfg, g.s2, mem, pasid, iova, READ)
                event("hit, stale" if kind == "fault" or v.out != r.out else "hit, current")
                model.move_to_end(key)
                continue
            assert not r.hit
            kind, v = refnested.walk(cfg, g.s2, mem, pasid, iova, acc)
            assert kind == "ok" and (r.out, r.gpa, r.perms) == (v.out, v.gpa, v.perms)
            if cap:
                model.pop(key, None)
                if len(model) >= cap:
                    model.popitem(last=False)
                first = (iova & ~(r.s1_size - 1)) >> 12
                model[key] = (r.out - (iova & 0xFFF), r.perms, bool(acc & WRITE), first,
                              first + (r.s1_size >> 12) - 1)
        assert d.stats()["entries"] == len(model)
