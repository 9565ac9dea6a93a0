"""IOVA interval bookkeeping of an IOAS (reference §7): free space, reserved
ranges and the automatic-IOVA allocator's arithmetic.

Every interval here is inclusive, ``(start, last)`` in bytes of IOVA, within
``[0, U64_MAX]`` (the kernel's ``[0, ULONG_MAX]`` on LP64). Nothing here
raises UapiError: this module answers questions, ``core.iommufd.ioas`` decides the
errno.

- :func:`alloc_window` and :func:`check_range` are the kernel allocator's
  alignment rules (§7 "Auto IOVA"), bit for bit, overflow guards included.
- :class:`FreeSpace` keeps the holes of (areas ∪ reserved) so that the
  allocator's first-fit search does not walk every area: holes are indexed by
  address and by size class (in C, cext/holes.c), and only classes that can
  hold the request are probed. Map and unmap cost O(log n) in the number of
  areas.
- :class:`Reserved` keeps reserved ranges per owner key (a device, a domain,
  IOMMU_TEST ADD_RESERVED) and their merged union for O(log r) intersection.
"""
import bisect
import errno
import weakref

from cext._native import ffi, lib

U64_MAX = (1 << 64) - 1
PAGE_SIZE = 4096
# HPAGE_SIZE with transparent huge pages: the allocator never aligns more (§7).
HPAGE_SIZE = 2 << 20


def roundup_pow_of_two(n):
    """The smallest power of two >= ``n`` (n >= 1)."""
    return 1 << (n - 1).bit_length()


def lowest_bit(n):
    """The value of the lowest set bit of ``n`` (n > 0)."""
    return n & -n


def alloc_alignment(length, addr):
    """The alignment the automatic allocator wants for ``length`` bytes whose
    source starts at ``addr`` (a user VA, or a file offset): the power of two
    covering ``length``, lowered to the alignment ``addr`` already has (so a
    THP-backed source can stay huge in the IOMMU), capped at HPAGE_SIZE.
    Requires 0 < length < 2**63 (the caller's EOVERFLOW rule)."""
    align = roundup_pow_of_two(length)
    if addr:
        align = min(align, lowest_bit(addr))
    return min(align, HPAGE_SIZE)


def check_range(start, last, length, align, page_offset):
    """Fit ``length`` bytes into ``[start, last]`` the way the kernel does.

    The start is rounded up to ``align`` and the source's page offset is OR-ed
    in (not added: with an alignment below PAGE_SIZE the two can share bits,
    and the kernel's result then keeps the OR). A window whose aligned start
    reaches ``last`` is refused even for a one-byte request, as the kernel's
    ``aligned_start >= last`` test does. Returns the IOVA, or None.
    """
    aligned = start + align - 1
    if aligned > U64_MAX:
        return None
    aligned = (aligned & ~(align - 1)) | page_offset
    if aligned >= last or last - aligned < length - 1:
        return None
    return aligned


def merge(ranges):
    """Sorted union of inclusive ranges; overlapping and adjacent ones merge
    (the kernel's span iterator treats touching nodes as one used span)."""
    out = []
    for s, l in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            if l > out[-1][1]:
                out[-1][1] = l
        else:
            out.append([s, l])
    return [(s, l) for s, l in out]


def subtract(ranges, minus):
    """Parts of the merged ranges ``ranges`` not covered by merged ``minus``."""
    out = []
    j = 0
    for s, l in ranges:
        cur = s
        while j < len(minus) and minus[j][1] < cur:
            j += 1
        k = j
        while cur <= l and k < len(minus) and minus[k][0] <= l:
            ms, ml = minus[k]
            if ms > cur:
                out.append((cur, ms - 1))
            cur = max(cur, ml + 1)
            k += 1
        if cur <= l:
            out.append((cur, l))
    return out


def holes(merged, lo=0, hi=U64_MAX):
    """The gaps of merged ranges within ``[lo, hi]``."""
    out = []
    cur = lo
    for s, l in merged:
        if l < lo:
            continue
        if s > hi:
            break
        if s > cur:
            out.append((cur, s - 1))
        cur = l + 1
        if cur > hi:
            return out
    if cur <= hi:
        out.append((cur, hi))
    return out


def intersects(starts, lasts, start, last):
    """Whether merged ranges given as parallel sorted lists meet [start, last].

    Only the range with the greatest start <= ``last`` can tell: any earlier
    one ends before it starts."""
    i = bisect.bisect_right(starts, last) - 1
    return i >= 0 and lasts[i] >= start


class Reserved:
    """Reserved IOVA ranges, grouped by owner key.

    Ranges of different owners may overlap (the kernel keeps one node per
    owner and range). ``union`` is the merged view, recomputed on change:
    owners are few and change only at attach/detach.
    """

    def __init__(self):
        self.by_key = {}
        self.union = []
        self._starts = []
        self._lasts = []

    def _rebuild(self):
        self.union = merge(r for rs in self.by_key.values() for r in rs)
        self._starts = [s for s, _ in self.union]
        self._lasts = [l for _, l in self.union]

    def add(self, key, ranges):
        self.by_key.setdefault(key, []).extend(ranges)
        self._rebuild()

    def pop(self, key):
        """Remove every range of ``key``; returns them."""
        gone = self.by_key.pop(key, [])
        self._rebuild()
        return gone

    def intersects(self, start, last):
        return intersects(self._starts, self._lasts, start, last)

    def __contains__(self, key):
        return key in self.by_key


class FreeSpace:
    """The holes of (areas ∪ reserved) over ``[0, U64_MAX]``.

    ``take(start, last)`` marks a range used (parts may already be used);
    ``give(start, last)`` frees a range that is entirely used now;
    ``containing(iova)`` is the hole holding an IOVA; ``first_fit(lo, hi,
    length, align, page_offset)`` is the kernel's first-fit over the holes
    inside ``[lo, hi]``; iterating gives the holes in address order.

    The holes live in C (cext/holes.c): indexed by their last byte, in
    address order and per size class (floor(log2(size))), in blocked sorted
    arrays, so that map and unmap cost one C call each, the same at 100 or
    100 000 areas. The allocator's arithmetic stays here, in Python.
    Raises MemoryError when C cannot allocate (nothing changed then).
    """

    def __init__(self):
        h = lib.iofs_holes_new()
        if h == ffi.NULL:
            raise MemoryError("free IOVA space")
        self._h = h
        self._finalizer = weakref.finalize(self, lib.iofs_holes_destroy, h)
        self._out = ffi.new("uint64_t[2]")

    def __iter__(self):
        cur = 0
        out = ffi.new("uint64_t[2]")
        while lib.iofs_holes_from(self._h, cur, out):
            yield (out[0], out[1])
            if out[1] == U64_MAX:
                return
            cur = out[1] + 1

    def __len__(self):
        return lib.iofs_holes_count(self._h)

    def containing(self, iova):
        """The hole ``(start, last)`` holding ``iova``, or None."""
        out = self._out
        if lib.iofs_holes_from(self._h, iova, out) and out[0] <= iova:
            return (out[0], out[1])
        return None

    def take(self, start, last):
        if lib.iofs_holes_take(self._h, start, last) < 0:
            raise MemoryError("free IOVA space")

    def give(self, start, last):
        rc = lib.iofs_holes_give(self._h, start, last)
        if rc < 0:
            raise MemoryError("free IOVA space") if rc == -errno.ENOMEM else \
                AssertionError(f"give {start:#x}..{last:#x}: part of it is free")

    def first_fit(self, lo, hi, length, align, page_offset):
        """The lowest IOVA the kernel would pick in the holes within [lo, hi].

        The hole holding ``lo`` is tried clipped at ``lo``; every later hole
        starts inside the window and is clipped at ``hi``. A hole can only fit
        if its size is at least ``length``, so only size classes from
        floor(log2(length)) up are searched, each from ``lo`` in address
        order, stopping at its first fit or past the best fit so far. (The
        whole space as one hole, class 64, always holds ``lo``.)
        """
        first = self.containing(lo)
        if first is not None:
            got = check_range(lo, min(first[1], hi), length, align, page_offset)
            if got is not None:
                return got
        best_start = None
        best = None
        h, out = self._h, self._out
        k = length.bit_length() - 1
        classes = lib.iofs_holes_classes(h) >> k << k
        while classes:
            c = lowest_bit(classes).bit_length() - 1
            classes &= classes - 1
            cur = lo
            while lib.iofs_holes_class_from(h, c, cur, out):
                s, l = out[0], out[1]
                if s > hi or (best_start is not None and s >= best_start):
                    break
                if s > lo:      # else the hole holding lo, tried above
                    got = check_range(s, min(l, hi), length, align, page_offset)
                    if got is not None:
                        best_start, best = s, got
                        break
                if l == U64_MAX:
                    break
                cur = l + 1
        return best


def allowed_windows(allowed, lo=PAGE_SIZE, hi=U64_MAX - PAGE_SIZE):
    """The allocator's search windows: ``[PAGE_SIZE, ULONG_MAX - PAGE_SIZE]``
    when no range is allowed, else the merged allowed ranges clipped to it
    (possibly none, and then nothing can be allocated)."""
    if not allowed:
        return [(lo, hi)]
    out = []
    for s, l in merge(allowed):
        s, l = max(s, lo), min(l, hi)
        if s <= l:
            out.append((s, l))
    return out


def alloc_iova(free, allowed, length, addr, iova_alignment):
    """The automatic IOVA for ``length`` bytes from source address ``addr``.

    Returns ``(iova, None)`` or ``(None, reason)`` with reason "overflow"
    (length >= 2**63: roundup_pow_of_two would overflow), "align" (the wanted
    alignment is below the IOAS's iova_alignment) or "nospace".
    """
    if length == 0 or length >= U64_MAX // 2:
        return None, "overflow"
    align = alloc_alignment(length, addr)
    if align < iova_alignment:
        return None, "align"
    page_offset = addr % PAGE_SIZE
    for lo, hi in allowed_windows(allowed):
        # The window's own start is aligned first; holes are searched from there.
        start = check_range(lo, hi, length, align, page_offset)
        if start is None:
            continue
        got = free.first_fit(start, hi, length, align, page_offset)
        if got is not None:
            return got, None
    return None, "nospace"
