#!/usr/bin/env python3
"""Nested-translation benchmark (DESIGN.md, Performance targets: "a nested
(2-D) walk and an IOTLB hit: ns per translation, printed beside the 1-D walk
of the same run"). Prints, from one run, ns per translation of:

- the 1-D walk: ``iofs_pt_translate_batch`` of cext/pagetable.c on the
  stage-2 table itself (4 levels, 4 KiB leaves);
- the 2-D walk on an IOTLB miss: ``iofs_nest_translate_batch`` on a nested
  domain with IOTLB capacity 0, so every translation walks the guest's
  4-level stage 1 (VT-d first stage, or SMMUv3 CD + VMSAv8-64 4 KiB with
  T0SZ 16) with each of its table reads and the output translated through
  the same 4-level stage 2 (4 + 1 stage-2 walks, i.e. up to 24 memory reads,
  nesting.md §2.5). The A bits are already set (a first pass sets them), so
  no write-back happens in the timed passes; the CD cache serves the SMMU CD;
- an IOTLB hit: the same IOVAs after a warm-up on a domain whose capacity
  holds them all;
- the pure-Python reference (cext/refnested.py) on a sample, for the ratio.

IOVAs are random 4 KiB pages over SPAN bytes of stage-1 space (4 KiB leaves
at both stages); medians of ``--repeat`` runs.

    python scripts/bench_nested.py [--iovas 20000] [--repeat 15]
"""
import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cext import refnested  # noqa: E402
from cext._native import ffi, lib  # noqa: E402
from cext.nested import NO_PASID, READ, Memory, NestedDomain  # noqa: E402
from cext.pagetable import WRITE, PageTable  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
SPAN = 64 * MiB                 # stage-1 input space translated
TBL_GPA = 0x1000_0000           # guest-physical home of the guest's tables
DATA_GPA = 1 * GiB              # guest-physical home of the data pages
UVA = 0x7F00_0000_0000          # HVA of the data (never read)
IOVA0 = 0x40_0000_0000          # stage-1 input base


class Guest:
    def __init__(self, npages):
        self.npages = npages
        self.raw = ffi.new("uint8_t[]", (npages + 1) * PAGE)
        a = int(ffi.cast("uintptr_t", self.raw))
        self.buf = ffi.cast("uint8_t *", self.raw) + ((-a) % PAGE)
        self.hva0 = int(ffi.cast("uintptr_t", self.buf))
        self.mem = Memory.local(self.buf, size=npages * PAGE)
        self.ents = ffi.cast("uint64_t *", self.buf)
        self.next = 0
        self.s2 = PageTable(ias_bits=48)
        self.s2.map(TBL_GPA, self.hva0, npages * PAGE, READ | WRITE, huge=False)
        self.s2.map(DATA_GPA, UVA, SPAN, READ | WRITE, huge=False)

    def alloc(self):
        gpa = TBL_GPA + self.next * PAGE
        self.next += 1
        assert self.next <= self.npages
        return gpa

    def w(self, gpa, val):
        self.ents[(gpa - TBL_GPA) // 8] = val

    def r(self, gpa):
        return self.ents[(gpa - TBL_GPA) // 8]


def build_tables(g, top_level, table_flags, leaf_fn, idx_shift):
    """4-level tables mapping [IOVA0, IOVA0 + SPAN) to DATA_GPA in 4 KiB
    leaves; idx_shift(level) gives the level's shift."""
    root = g.alloc()
    for off in range(0, SPAN, PAGE):
        iova = IOVA0 + off
        t = root
        for L in range(top_level, 0, -1):
            e_gpa = t + 8 * ((iova >> idx_shift(L)) & 511)
            e = g.r(e_gpa)
            if not e:
                e = g.alloc() | table_flags
                g.w(e_gpa, e)
            t = e & 0x000F_FFFF_FFFF_F000
        g.w(t + 8 * ((iova >> idx_shift(0)) & 511), leaf_fn(DATA_GPA + off))
    return root


def vtd_setup(g):
    root = build_tables(g, 3, 0x7, lambda gpa: gpa | 0x7, lambda L: 12 + 9 * L)
    return root, lambda cap: NestedDomain.vtd(root, s2=g.s2, mem=g.mem, capacity=cap), dict(
        format=refnested.FMT_VTD, pgtbl_addr=root, addr_width=48, vtd_flags=0, fs1gp=1, haw=52)


def smmu_setup(g):
    root = build_tables(g, 3, 0x3, lambda gpa: gpa | 0x3 | 1 << 10 | 1 << 6,
                        lambda L: 12 + 9 * L)
    cd = g.alloc()
    g.w(cd, 16 | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 41 | 1 << 48)
    g.w(cd + 8, root)
    ste = (1 | 5 << 1 | cd, 0)
    return root, lambda cap: NestedDomain.smmu(ste, s2=g.s2, mem=g.mem, capacity=cap), dict(
        format=refnested.FMT_SMMU, ste=ste, haw=48, smmu_httu=0)


def median_ns(fn, n, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / n


def bench_format(name, setup, iovas, repeat, one_d):
    g = Guest(npages=SPAN // PAGE // 512 + 64)
    _, make, cfg = setup(g)
    n = len(iovas)
    src = ffi.new("uint64_t[]", iovas)
    out = ffi.new("uint64_t[]", n)
    fault = ffi.new("struct iofs_nest_fault *")

    miss = make(0)
    assert lib.iofs_nest_translate_batch(miss.cdata, NO_PASID, src, n, READ, out, fault) == n
    miss.reset_stats()
    t_miss = median_ns(lambda: lib.iofs_nest_translate_batch(miss.cdata, NO_PASID, src, n,
                                                             READ, out, fault), n, repeat)
    st = miss.stats()
    assert st["hits"] == 0 and st["misses"] == n * repeat and st["ad_writes"] == 0, st
    walks_per_pass = st["walks"] // repeat

    hit = make(n * 2)
    assert lib.iofs_nest_translate_batch(hit.cdata, NO_PASID, src, n, READ, out, fault) == n
    hit.reset_stats()
    t_hit = median_ns(lambda: lib.iofs_nest_translate_batch(hit.cdata, NO_PASID, src, n,
                                                            READ, out, fault), n, repeat)
    assert hit.stats()["misses"] == 0

    # one IOVA each through the Python reference, for the ratio
    sample = iovas[:max(1, min(n, 2000))]
    mem = refnested.BufferMem(g.buf, g.hva0, g.npages * PAGE)
    t0 = time.perf_counter_ns()
    for iova in sample:
        kind, r = refnested.walk(cfg, g.s2, mem, NO_PASID, iova, READ)
        assert kind == "ok"
    t_ref = (time.perf_counter_ns() - t0) / len(sample)
    # check: C and reference agree on the sample
    for iova in sample[:50]:
        assert miss.walk(iova).out == refnested.walk(cfg, g.s2, mem, NO_PASID, iova, READ)[1].out

    print(f"{name:6s}  1-D walk {one_d:7.1f} ns   2-D walk (IOTLB miss) {t_miss:7.1f} ns   "
          f"IOTLB hit {t_hit:6.1f} ns   Python reference 2-D {t_ref / 1000:7.1f} us  "
          f"(C {t_ref / t_miss:5.0f}x)  [{walks_per_pass} walks/pass]")
    return t_miss, t_hit


def one_d_walk(iovas, repeat):
    """The 1-D walk of the same run: the stage-2 table of a guest, 4 levels,
    4 KiB leaves, the same number of random pages."""
    pt = PageTable(ias_bits=48)
    pt.map(DATA_GPA, UVA, SPAN, READ | WRITE, huge=False)
    gpas = [DATA_GPA + (i - IOVA0) for i in iovas]
    n = len(gpas)
    src = ffi.new("uint64_t[]", gpas)
    out = ffi.new("uint64_t[]", n)
    assert lib.iofs_pt_translate_batch(pt.cdata, src, n, READ, out) == n
    return median_ns(lambda: lib.iofs_pt_translate_batch(pt.cdata, src, n, READ, out), n, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iovas", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    iovas = [IOVA0 + rnd.randrange(SPAN // PAGE) * PAGE + rnd.randrange(PAGE)
             for _ in range(a.iovas)]
    print(f"{a.iovas} random IOVAs over {SPAN // MiB} MiB, 4 KiB leaves at both stages, "
          f"4-level stage 1 over 4-level stage 2; median of {a.repeat}")
    one_d = one_d_walk(iovas, a.repeat)
    for name, setup in (("VT-d", vtd_setup), ("SMMUv3", smmu_setup)):
        bench_format(name, setup, iovas, a.repeat, one_d)


if __name__ == "__main__":
    main()
