"""Pure-Python reference walker of the C page-table format.

It reads the raw 64-bit entries of a live :class:`cext.pagetable.PageTable`
through cffi, starting at ``iofs_pt_root()``, and decodes them from the format
description in ``pagetable.h`` alone (its constants are written out here, not
taken from the C library, so a format change that the header and this file do
not agree on shows up in the tests). It is the reference the C walker is held
against, and the denominator of the speed ratio in
``scripts/bench_pagetable.py``. It never writes: no A/D bits are set.
"""
from cext._native import ffi

PRESENT = 0x01
READ = 0x02
WRITE = 0x04
ACCESSED = 0x08
DIRTY = 0x10
LEAF = 0x20
FLAGS = 0x3F
ADDR_MASK = ((1 << 64) - 1) & ~FLAGS
HDR_BYTES = 64


def _entries(addr):
    return ffi.cast("uint64_t *", addr)


def walk(pt, iova):
    """Look up ``iova`` in ``pt`` (a PageTable) the way the IOMMU would.

    Returns ``(addr, prot, flags, leaf_size)``: the output address of the byte
    at ``iova``, its protection in API bits (READ=1, WRITE=2), the raw entry
    flag bits (PRESENT, READ, WRITE, ACCESSED, DIRTY, LEAF), and the leaf size
    in bytes; or ``None`` when there is no translation (or iova is outside
    ``[0, 1 << ias_bits)``).
    """
    if not 0 <= iova < 1 << pt.ias_bits:
        return None
    gshift = pt.granule_shift
    bpl = pt.bits_per_level
    mask = (1 << bpl) - 1
    table = pt.root
    level = pt.levels - 1
    while True:
        shift = gshift + level * bpl
        e = _entries(table)[(iova >> shift) & mask]
        if not e & PRESENT:
            return None
        if level == 0 or e & LEAF:
            size = 1 << shift
            return ((e & ADDR_MASK) + (iova & (size - 1)), (e >> 1) & 3, e & FLAGS, size)
        table = e & ADDR_MASK
        level -= 1


def leaves(pt):
    """Every leaf of ``pt`` in IOVA order, as ``(iova, size, addr, flags)``
    (bytes; addr is the leaf's output address; flags the raw entry bits)."""
    out = []
    _collect(pt, pt.root, pt.levels - 1, 0, out, None)
    return out


def scan(pt):
    """``(leaves(pt), check(pt))`` in one pass over the tree."""
    out, counter = [], []
    _collect(pt, pt.root, pt.levels - 1, 0, out, counter)
    return out, len(counter)


def check(pt):
    """Check the structural rules of the format over the whole tree and
    return the number of tables (root included). Raises AssertionError when:
    a table's header count differs from its PRESENT entries; a non-root table
    is empty; a header's level is wrong; a leaf's address is not aligned to its
    size; a level-0 entry carries LEAF; a huge leaf sits above max_leaf_level;
    a table pointer carries flags other than PRESENT; a root entry maps beyond
    ``1 << ias_bits``."""
    counter = []
    _collect(pt, pt.root, pt.levels - 1, 0, None, counter)
    return len(counter)


def _collect(pt, table, level, base, out, counter):
    gshift = pt.granule_shift
    nent = 1 << pt.bits_per_level
    size = 1 << (gshift + level * pt.bits_per_level)
    ents = _entries(table)
    if counter is not None:
        hdr = ffi.cast("uint32_t *", table - HDR_BYTES)
        present = sum(1 for i in range(nent) if ents[i] & PRESENT)
        assert hdr[0] == present, f"table {table:#x} level {level}: count {hdr[0]} != {present}"
        assert hdr[1] == level, f"table {table:#x}: header level {hdr[1]} != {level}"
        assert present or table == pt.root, f"empty table {table:#x} at level {level}"
        counter.append(table)
    for i in range(nent):
        e = ents[i]
        if not e & PRESENT:
            assert e == 0, f"non-present entry {e:#x} is not zero"
            continue
        iova = base + i * size
        if counter is not None:
            assert iova + size <= 1 << pt.ias_bits, f"entry at {iova:#x} beyond ias"
        if level == 0 or e & LEAF:
            if counter is not None:
                assert level == 0 or level <= pt.max_leaf_level, f"leaf at level {level}"
                assert level > 0 or not e & LEAF, "LEAF bit at level 0"
                assert (e & ADDR_MASK) % size == 0, f"leaf {e:#x} misaligned for {size:#x}"
            if out is not None:
                out.append((iova, size, e & ADDR_MASK, e & FLAGS))
        else:
            if counter is not None:
                assert e & FLAGS == PRESENT, f"table pointer {e:#x} has flags"
            _collect(pt, e & ADDR_MASK, level - 1, iova, out, counter)
