#!/usr/bin/env python3
"""Page-table benchmark (DESIGN.md, Performance targets). Prints, from one run:

- C walker speed ÷ the pure-Python reference walker (cext/refwalk.py) on the
  same table and the same IOVAs (target >= 100);
- ns per 4-level translation in batches (target <= 30): the C
  ``iofs_pt_translate_batch`` called through cffi on a prebuilt array of
  BATCH IOVAs, so the one Python call per batch is amortised to well under
  a nanosecond per IOVA; what is measured is the C walk itself, access READ
  (the ACCESSED bit is already set, so no entry is written), output into a
  prebuilt array. Random IOVAs defeat the walker's last-table cache and give
  full root-to-leaf walks, over 1 GiB (2 MiB of tables, in cache) and over
  16 GiB (32 MiB of tables: a cache miss per walk, which the batch overlaps
  by prefetching ahead); page-stride IOVAs show the cached case;
- ns per 4 KiB page to map 1 GiB (target <= 5) with ``iofs_pt_map``: aligned
  (one 1 GiB leaf), 2 MiB-aligned only (2 MiB leaves) and misaligned (huge
  leaves impossible: 4 KiB leaves only), with the leaf counts of
  ``PageTable.stats()``; the unmap of each is timed too. Freed tables are
  returned to the system (malloc_trim) before each timed map, so the map
  pays for fresh table memory, page faults included.

    python scripts/bench_pagetable.py [--iovas 100000] [--repeat 30]

Every figure is the median of its repeats; the geometry is the built-in
IOMMU's (4 KiB granule, 9 bits per level, 48-bit IOVA: 4 levels).
"""
import argparse
import ctypes
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cext import refwalk  # noqa: E402
from cext._native import ffi, lib  # noqa: E402
from cext.pagetable import READ, WRITE, PageTable  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
UVA = 0x7F00_0000_0000          # an output address aligned to 1 GiB
SPAN = 1 * GiB                   # the region the walk benchmarks translate in
BIG_SPAN = 16 * GiB              # ... and one whose tables do not fit the caches


# The tables of the previous repeat go back to the system before each timed
# map, so every map pays for fresh memory (page faults included), as a
# first map of that size does: the worst case, not malloc's warm free list.
_malloc_trim = ctypes.CDLL(None).malloc_trim


def median_time(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def walk_table(span):
    """``span`` bytes at IOVA 4 GiB in 4 KiB leaves only (huge=False): every
    translation walks all four levels."""
    pt = PageTable()
    pt.map(4 * GiB, UVA + PAGE, span, READ | WRITE, huge=False)
    st = pt.stats()
    assert st["leaves_at"][0] == span // PAGE and st["levels"] == 4, st
    return pt


def c_batch(pt, iovas, repeat):
    """Median ns per IOVA of iofs_pt_translate_batch over ``iovas``."""
    n = len(iovas)
    cpt = pt.cdata
    src = ffi.new("uint64_t[]", iovas)
    out = ffi.new("uint64_t[]", n)
    lib.iofs_pt_translate_batch(cpt, src, n, READ, out)        # sets ACCESSED once
    assert lib.iofs_pt_translate_batch(cpt, src, n, READ, out) == n
    return median_time(lambda: lib.iofs_pt_translate_batch(cpt, src, n, READ, out), repeat) / n


def bench_walk(n, repeat):
    pt = walk_table(SPAN)
    rng = random.Random(1)
    rand = [4 * GiB + rng.randrange(SPAN) for _ in range(n)]
    seq = [4 * GiB + (i * PAGE) % SPAN + 123 for i in range(n)]

    # Agreement first: the two walkers must say the same about these IOVAs.
    for iova in rand[:1000]:
        assert refwalk.walk(pt, iova)[0] == pt.translate(iova, 0)[0]

    walk = refwalk.walk
    t_py = median_time(lambda: [walk(pt, i) for i in rand], max(3, repeat // 10)) / n
    t_rand = c_batch(pt, rand, repeat)
    t_seq = c_batch(pt, seq, repeat)
    # The per-call Python face, for scale: one cffi call per IOVA.
    tr = pt.translate
    t_call = median_time(lambda: [tr(i, READ) for i in rand], max(3, repeat // 10)) / n
    pt.close()

    # Tables far larger than the CPU caches: each walk misses on its leaf.
    big = walk_table(BIG_SPAN)
    table_mib = big.stats()["table_bytes"] >> 20
    t_big = c_batch(big, [4 * GiB + rng.randrange(BIG_SPAN) for _ in range(n)], repeat)
    big.close()

    print(f"walk: 4 KiB leaves only (4 levels), {n} IOVAs, access READ (ns per IOVA)")
    print(f"  1 GiB mapped: Python reference walker (refwalk.walk)    {t_py * 1e9:9.1f}")
    print(f"  1 GiB mapped: C batch, random IOVAs (full walks)        {t_rand * 1e9:9.1f}")
    print(f"  1 GiB mapped: C batch, page-stride IOVAs (cached walk)  {t_seq * 1e9:9.1f}")
    print(f"  1 GiB mapped: PageTable.translate(), one call per IOVA  {t_call * 1e9:9.1f}")
    print(f"  {BIG_SPAN >> 30} GiB mapped ({table_mib} MiB of tables): C batch, random IOVAs "
          f"{t_big * 1e9:6.1f}")
    return t_py, t_rand, t_big, t_call


def bench_map(repeat):
    """(name, map ns/page, unmap ns/page, leaves_at) for three alignments of 1 GiB."""
    cases = [
        ("aligned 1 GiB (iova, addr 1 GiB-aligned)", 4 * GiB, UVA),
        ("2 MiB-aligned only (addr + 2 MiB)", 4 * GiB, UVA + 2 * MiB),
        ("misaligned (addr + 4 KiB: no huge leaf)", 4 * GiB, UVA + PAGE),
    ]
    pages = SPAN // PAGE
    rows = []
    for name, iova, addr in cases:
        pt = PageTable()
        cpt = pt.cdata
        tm, tu = [], []
        leaves = None
        for _ in range(repeat):
            _malloc_trim(0)
            t0 = time.perf_counter()
            rc = lib.iofs_pt_map(cpt, iova, addr, SPAN, READ | WRITE, 1)
            t1 = time.perf_counter()
            assert rc == 0, rc
            if leaves is None:
                st = pt.stats()
                leaves = st["leaves_at"][:3]
                assert st["mapped_bytes"] == SPAN
            t2 = time.perf_counter()
            assert lib.iofs_pt_unmap(cpt, iova, SPAN) == SPAN
            t3 = time.perf_counter()
            tm.append(t1 - t0)
            tu.append(t3 - t2)
        assert pt.stats()["tables"] == 1
        pt.close()
        rows.append((name, statistics.median(tm) / pages, statistics.median(tu) / pages, leaves))
    print(f"map 1 GiB ({pages} pages of 4 KiB), huge leaves allowed, median of {repeat}")
    for name, m, u, leaves in rows:
        print(f"  {name:42s} map {m * 1e9:6.3f} ns/page ({m * pages * 1e6:8.1f} µs)   "
              f"unmap {u * 1e9:6.3f} ns/page   leaves 4K/2M/1G {leaves[0]}/{leaves[1]}/{leaves[2]}")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iovas", type=int, default=100_000, help="IOVAs per walk batch")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    t_py, t_rand, t_big, t_call = bench_walk(args.iovas, args.repeat)
    rows = bench_map(max(5, args.repeat // 3))
    worst_map = max(m for _, m, _, _ in rows)
    print("ratios and targets")
    print(f"  C walker / Python walker, random IOVAs    {t_py / t_rand:7.0f}x   (target >= 100)")
    print(f"  PageTable.translate() / Python walker     {t_py / t_call:7.1f}x   (per-call Python face)")
    print(f"  ns per 4-level translation, C batch       {max(t_rand, t_big) * 1e9:7.1f}    "
          f"(target <= 30; worst of 1 and {BIG_SPAN >> 30} GiB)")
    print(f"  ns per 4 KiB page, 1 GiB map, worst case  {worst_map * 1e9:7.2f}    (target <= 5)")


if __name__ == "__main__":
    main()
