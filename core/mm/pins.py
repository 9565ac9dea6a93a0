"""The pin-count model behind IOMMU_TEST_CMD MD_CHECK_REFS (reference §12, §13).

The kernel pins a page of user memory once per ``iopt_pages`` (core.iommufd.ioas
``Pages``: the memory of one IOAS_MAP, shared by its IOAS_COPY copies) while
any domain or in-kernel access needs it, and MD_CHECK_REFS reads that
FOLL_PIN count back per page. The emulator pins nothing, so the count is
derived from what the kernel would hold:

- an area in an IOAS with a domain (``Area.pinned``) pins every page its
  memory touches;
- an access pin (core.iommufd.access ``Pin``) pins the pages of each piece;
- pins of the same ``Pages`` count once per page; distinct ``Pages`` add up
  (the same memory mapped twice is pinned twice).

Nothing is counted while mapping: the count is computed when asked, by one
walk over the areas of the asking process (a test op), so IOAS_MAP pays
nothing for it. Ranges are merged per ``Pages`` and swept once; no per-page
work.
"""
from ..iommufd.access import Access
from ..iommufd.ioas import Ioas
from .filemem import file_views
from .iova import PAGE_SIZE


def _page_span(va, length):
    lo = va - va % PAGE_SIZE
    hi = va + length
    return lo, hi + (-hi % PAGE_SIZE)


def pinned_runs(emulator, tgid, start, end):
    """How many times each page of ``[start, end)`` (page-aligned VAs of
    process ``tgid``) is pinned: a sorted list of ``(lo, hi, count)``
    half-open VA runs with count >= 1; pages in no run count 0."""
    spans = {}     # Pages -> [(lo, hi)]
    views = None

    def add(pages, va, length):
        lo, hi = _page_span(va, length)
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            spans.setdefault(pages, []).append((lo, hi))

    def add_memory(area, va, length):
        nonlocal views
        fm = area.pages.file
        if fm is None:
            if area.owner.tgid == tgid:
                add(area.pages, va, length)
            return
        # MAP_FILE pages count wherever the process maps that file (its
        # pages are the file's, as the kernel's struct pages are).
        if views is None:
            views = file_views(tgid, start, end)
        fo = fm.offset(va)
        for lo, hi, dev, ino, voff in views:
            if (dev, ino) != (fm.dev, fm.ino):
                continue
            a, b = max(fo, voff), min(fo + length, voff + hi - lo)
            if a < b:
                add(area.pages, lo + a - voff, b - a)

    for ctx in list(emulator.contexts):
        for obj in list(ctx.objects.values()):
            if isinstance(obj, Ioas) and obj.domains:
                for area in obj.areas.values():
                    if area.pinned:
                        add_memory(area, area.user_va, area.length)
            elif isinstance(obj, Access):
                for pin in obj.pins:
                    for area, va, length in pin.pieces:
                        add_memory(area, va, length)
    events = []
    for ranges in spans.values():
        ranges.sort()
        cur_lo, cur_hi = ranges[0]
        for lo, hi in ranges[1:]:
            if lo <= cur_hi:
                cur_hi = max(cur_hi, hi)
                continue
            events += ((cur_lo, 1), (cur_hi, -1))
            cur_lo, cur_hi = lo, hi
        events += ((cur_lo, 1), (cur_hi, -1))
    events.sort()
    runs = []
    count = 0
    prev = None
    for pos, delta in events:
        if prev is not None and pos > prev and count:
            runs.append((prev, pos, count))
        count += delta
        prev = pos
    return runs


def first_refs_mismatch(emulator, tgid, start, length, refs):
    """The first page-aligned VA in ``[start, start+length)`` of process
    ``tgid`` whose pin count is not ``refs``, or None."""
    end = start + length
    pos = start
    for lo, hi, count in pinned_runs(emulator, tgid, start, end):
        if pos < lo and refs != 0:
            return pos
        if count != refs:
            return max(pos, lo)
        pos = hi
    if pos < end and refs != 0:
        return pos
    return None
