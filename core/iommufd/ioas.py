"""IOAS objects (I/O address spaces) and their ioctls (reference §5, §7).

An :class:`Ioas` maps ranges of IOVA to ranges of a client's virtual memory
(:class:`Area`). It knows nothing of page tables: every paging HWPT made on it
is a *domain* that mirrors its areas (see :meth:`Ioas.add_domain` for the
interface a domain offers). Interval arithmetic and the automatic-IOVA
allocator live in :mod:`core.mm.iova`.

Handlers here: IOMMU_IOAS_ALLOC, IOMMU_IOAS_IOVA_RANGES,
IOMMU_IOAS_ALLOW_IOVAS, IOMMU_IOAS_MAP, IOMMU_IOAS_COPY, IOMMU_IOAS_UNMAP,
IOMMU_OPTION. Each one checks in the kernel's order (the order is the
contract: a client sees the first failing rule's errno). Failures leave no
area, owner reference, domain mapping or object ID behind, except where the
kernel itself keeps partial work (IOAS_UNMAP, §7).

Units: IOVA, lengths and user VAs in bytes; ranges ``(start, last)`` are
inclusive, like ``struct iommu_iova_range``.
"""
import errno
import fcntl
import os
import struct

from sortedcontainers import SortedDict

from .. import uapi
from ..errors import UapiError
from ..files import CallerFile
from ..mm.iova import (PAGE_SIZE, U64_MAX, FreeSpace, Reserved, alloc_iova, holes,
                       intersects, merge, subtract)
from ..mm import filemem
from ..mm.usermem import check_access
from ..uapi import ffi
from .context import Obj
from .ucmd import ioctl, respond_anyway

ULONG_MAX = uapi.ULONG_MAX

# Protection bits of an area, as the page tables take them (cext.pagetable).
PROT_READ = 1
PROT_WRITE = 2

MAP_FLAGS = (uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_WRITEABLE
             | uapi.IOMMU_IOAS_MAP_READABLE)
_RW = uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE

_RANGE = struct.Struct("<QQ")
# iommu_iova_range arrays are read this many entries per process_vm_readv.
_RANGE_BATCH = 256


def map_prot(flags):
    """READ/WRITE page-table bits from IOMMU_IOAS_MAP_{READABLE,WRITEABLE}."""
    prot = 0
    if flags & uapi.IOMMU_IOAS_MAP_READABLE:
        prot |= PROT_READ
    if flags & uapi.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= PROT_WRITE
    return prot


class Pages:
    """The source memory of one IOAS_MAP: the kernel's ``iopt_pages``.

    Shared by the area the MAP made and every area IOAS_COPY made from it.
    ``writable``: registered writable (IOAS_MAP with WRITEABLE), which is
    what COPY's EPERM rule looks at and how pinning checks the memory.
    :meth:`areas` lists the areas using it (to know what is already pinned).
    """

    # The users are None, one Area, or a set of two or more: most memory is
    # never copied, and a set per mapping would be one more object for the
    # garbage collector to walk per area.
    __slots__ = ("writable", "_users", "file", "held")

    def __init__(self, writable, file=None):
        self.writable = writable
        self._users = None
        # MAP_FILE: the core.mm.filemem.FileMapping the memory is (None:
        # process memory of the area's owner).
        self.file = file
        # Process memory that is a MAP_SHARED mapping, once pinned: a hold
        # on its object (core.mm.filemem.Held), so that it survives its
        # process as pinned pages do (see :func:`adopt`).
        self.held = None

    def source_addr(self, va):
        """The address the kernel aligns a new IOVA to for memory at ``va``:
        the file offset for a file, the user VA otherwise (§7)."""
        return va if self.file is None else self.file.offset(va)

    def areas(self):
        u = self._users
        if u is None:
            return ()
        return (u,) if isinstance(u, Area) else tuple(u)

    def link(self, area):
        u = self._users
        if u is None:
            self._users = area
        elif isinstance(u, Area):
            self._users = {u, area}
        else:
            u.add(area)

    def unlink(self, area):
        u = self._users
        if u is area:
            self._users = None
        elif isinstance(u, set):
            u.discard(area)
            if len(u) == 1:
                self._users = next(iter(u))


class Area:
    """One mapping of an IOAS: IOVA ``[iova, iova+length)`` to the owner's
    virtual addresses ``[user_va, user_va+length)``.

    - ``prot``: PROT_READ (1) | PROT_WRITE (2), as the page tables want;
    - ``owner``: the :class:`core.mm.usermem.Owner` whose memory this is (one
      reference, taken through ``ctx.owners``);
    - ``pages``: the :class:`Pages` it was cut from; ``writeable_source``
      tells whether that memory was registered writable;
    - ``pinned``: its memory has been checked and loaded into the IOAS's
      domains (False for a lazy mapping in an IOAS without domain, §7);
    - ``locks``: holders that forbid unmapping it (IOAS_UNMAP: EBUSY).
    """

    __slots__ = ("iova", "length", "user_va", "prot", "owner", "pages", "pinned", "locks")

    def __init__(self, iova, length, user_va, prot, owner, pages):
        self.iova = iova
        self.length = length
        self.user_va = user_va
        self.prot = prot
        self.owner = owner
        self.pages = pages
        self.pinned = False
        self.locks = 0

    @property
    def last(self):
        """The last IOVA of the area (inclusive)."""
        return self.iova + self.length - 1

    @property
    def writeable_source(self):
        return self.pages.writable

    def __repr__(self):
        return f"<Area {self.iova:#x}+{self.length:#x} -> {self.user_va:#x} prot {self.prot}>"


class _Piece:
    """A run of source memory to become one new area (a MAP has one, a COPY
    one per source area it crosses, like the kernel's pages list)."""

    __slots__ = ("pages", "user_va", "owner", "length")

    def __init__(self, pages, user_va, owner, length):
        self.pages = pages
        self.user_va = user_va
        self.owner = owner
        self.length = length


class Ioas(Obj):
    """An I/O address space (reference §7).

    State: ``areas`` (SortedDict iova -> :class:`Area`, non-overlapping),
    ``reserved`` (:class:`core.mm.iova.Reserved`, by owner key), ``allowed``
    (sorted inclusive ranges of IOMMU_IOAS_ALLOW_IOVAS), ``domains`` (in the
    order they were added), ``disable_large_pages`` (IOMMU_OPTION
    HUGE_PAGES=0) and ``iova_alignment`` (bytes; 1 with no domain, else the
    largest domain page size; at least PAGE_SIZE with large pages disabled
    or a pinning in-kernel access attached). ``accesses``: the in-kernel
    accesses attached (core.iommufd.access.Access); ``access_pins``: area -> how
    many access pins hold it (the kernel's ``num_accesses``; such an area
    is unmapped only after its accesses let go, and never split).

    **Domain interface** (implemented by paging HWPTs): ``page_size`` (bytes,
    a power of two), ``map(iova, user_va, length, prot, huge, owner=)``
    (``owner``: the area's core.mm.usermem.Owner),
    ``unmap(iova, length)``, and optionally ``aperture = (start, last)``: the
    IOVA the domain can translate; everything outside is reserved while the
    domain is in the IOAS, as the kernel does with a domain's geometry (§7
    IOAS_IOVA_RANGES). ``map`` may raise OSError or UapiError; the errno
    reaches the client and nothing stays mapped.
    """

    kind = "IOAS"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.areas = SortedDict()
        self.free = FreeSpace()
        self.reserved = Reserved()
        self.allowed = []
        self._allowed_starts = []
        self._allowed_lasts = []
        self.domains = []
        self.disable_large_pages = False
        self.iova_alignment = 1
        self.accesses = []
        self.access_pins = {}

    # -- lookups ------------------------------------------------------------------
    # Lookups go through irange, never positional indexing: sortedcontainers
    # rebuilds its positional index after each change, O(n / load) a time.
    def area_at(self, iova):
        """The area holding IOVA ``iova``, or None. O(log n)."""
        k = next(self.areas.irange(maximum=iova, reverse=True), None)
        if k is None:
            return None
        area = self.areas[k]
        return area if area.last >= iova else None

    def _first_area(self, start, last):
        area = self.area_at(start)
        if area is not None:
            return area
        k = next(self.areas.irange(minimum=start, maximum=last), None)
        return None if k is None else self.areas[k]

    def areas_in(self, iova, last):
        """Areas meeting IOVA ``[iova, last]``, in ascending IOVA (a list)."""
        first = self._first_area(iova, last)
        if first is None:
            return []
        return [self.areas[k] for k in self.areas.irange(first.iova, last)]

    def _allowed_intersects(self, start, last):
        return intersects(self._allowed_starts, self._allowed_lasts, start, last)

    # -- domains ------------------------------------------------------------------
    def _check_alignment(self, align):
        """EADDRINUSE unless every area's IOVA, length and page offset are
        multiples of ``align``."""
        mask = align - 1
        for area in self.areas.values():
            if area.iova & mask or area.length & mask or (area.user_va % PAGE_SIZE) & mask:
                raise UapiError(errno.EADDRINUSE, f"{area!r} is not aligned to {align:#x}")

    def _recalc_alignment(self):
        new = PAGE_SIZE if self.disable_large_pages else 1
        for d in self.domains:
            new = max(new, d.page_size)
        for a in self.accesses:
            new = max(new, a.iova_alignment)
        if new > self.iova_alignment:
            self._check_alignment(new)
        self.iova_alignment = new

    def _unpinned_parts(self, area):
        """VA ranges of ``area`` that no pinned area on the same pages covers:
        what pinning must still check (memory already pinned stays usable
        even if the client unmapped it since, as pinned pages do)."""
        whole = [(area.user_va, area.user_va + area.length - 1)]
        pinned = [a for a in area.pages.areas() if a.pinned and a is not area]
        if not pinned:
            return whole    # the usual case: memory no other area holds
        return subtract(whole, merge((a.user_va, a.user_va + a.length - 1) for a in pinned))

    def _pin(self, areas):
        """Pin-time check of each area's memory in its owner (§7 Pinning):
        EFAULT if a page is unmapped, unreadable, or read-only for writable
        pages, or if the owner has exited. MAP_SHARED memory is also held
        (``Pages.held``: one /proc/PID/maps lookup) so that it outlives its
        process as pinned pages do (:func:`adopt`)."""
        for area in areas:
            for s, l in self._unpinned_parts(area):
                check_access(area.owner, s, l - s + 1, area.pages.writable)
            pages = area.pages
            if pages.file is None and pages.held is None:
                pages.held = filemem.hold_shared(area.owner, area.user_va, area.length,
                                                 pages.writable)

    def _fill(self, areas, domains):
        """Map every area into every domain; on any failure unmap what was
        mapped and raise (UapiError; an OSError of a page table keeps its errno)."""
        done = []
        huge = not self.disable_large_pages
        try:
            for d in domains:
                for area in areas:
                    d.map(area.iova, area.user_va, area.length, area.prot, huge, owner=area.owner)
                    done.append((d, area))
        except BaseException as e:
            for d, area in reversed(done):
                d.unmap(area.iova, area.length)
            if isinstance(e, OSError) and e.errno:
                raise UapiError(e.errno, f"domain map: {e}") from e
            raise

    def add_domain(self, domain):
        """Make ``domain`` mirror this IOAS (the kernel's iopt_table_add_domain).

        In order: EINVAL if the new iova_alignment (max of the domain's
        ``page_size`` and the current one) exceeds PAGE_SIZE; EADDRINUSE if an
        area is not aligned to it; EADDRINUSE if the domain's aperture leaves
        out an area or an allowed range; EFAULT if a lazy area's memory is not
        there any more (mappings made with no domain are checked now, §7
        Pinning); an error of ``domain.map``. On failure nothing changed.
        """
        if domain in self.domains:
            raise UapiError(errno.EEXIST, "domain already in the IOAS")
        new_align = max(domain.page_size, self.iova_alignment)
        if new_align > PAGE_SIZE:
            raise UapiError(errno.EINVAL, f"domain page size {domain.page_size:#x} > PAGE_SIZE")
        if new_align != self.iova_alignment:
            self._check_alignment(new_align)
        key = ("domain", id(domain))
        outside = []
        aperture = getattr(domain, "aperture", None)
        if aperture is not None:
            start, last = aperture
            if start > 0:
                outside.append((0, start - 1))
            if last < U64_MAX:
                outside.append((last + 1, U64_MAX))
        if outside:
            self.add_reserved(key, outside)
        areas = list(self.areas.values())
        lazy = [a for a in areas if not a.pinned]
        try:
            self._pin(lazy)
            self._fill(areas, [domain])
        except BaseException:
            self.remove_reserved(key)
            raise
        for area in lazy:
            area.pinned = True
        self.iova_alignment = new_align
        self.domains.append(domain)

    def remove_domain(self, domain):
        """Stop mirroring into ``domain``: unmap every area from it, drop its
        aperture reservation, lower iova_alignment. With the last domain
        gone the areas become lazy again (unpinned). Absent: no-op."""
        if domain not in self.domains:
            return
        self.domains.remove(domain)
        for area in self.areas.values():
            domain.unmap(area.iova, area.length)
        self.remove_reserved(("domain", id(domain)))
        if not self.domains:
            for area in self.areas.values():
                area.pinned = False
        # Fewer domains can only lower the alignment: this cannot fail.
        self._recalc_alignment()

    # -- in-kernel accesses (core.iommufd.access) ----------------------------------------------
    def add_access(self, access):
        """Attach an in-kernel access (the kernel's iopt_add_access): the
        alignment becomes at least ``access.iova_alignment`` (PAGE_SIZE for
        a pinning access, §7); EADDRINUSE if an area is not aligned to it.
        Nothing changes on error."""
        new = max(self.iova_alignment, access.iova_alignment)
        if new > self.iova_alignment:
            self._check_alignment(new)
        self.iova_alignment = new
        self.accesses.append(access)

    def remove_access(self, access):
        """Detach an access (it holds no pin any more); the alignment may drop."""
        if access in self.accesses:
            self.accesses.remove(access)
            self._recalc_alignment()

    def check_pinnable(self, area, user_va, length):
        """Pin-time check of ``[user_va, user_va+length)``, part of
        ``area``'s memory, for an access pinning it (§7 Pinning): EFAULT if
        it is not there (readable, and writable when registered writable),
        unless another area of the same memory holds it pinned already."""
        self._pin([Area(area.iova, length, user_va, area.prot, area.owner, area.pages)])

    def _notify_unmap(self, area):
        # The kernel asks every access of the IOAS to let go of the area
        # (their unmap callback) and retries; one that does not is EDEADLOCK
        # (§7 IOAS_UNMAP).
        for a in list(self.accesses):
            a.unmap(area.iova, area.length)
        if area in self.access_pins:
            raise UapiError(errno.EDEADLOCK, f"{area!r} is still pinned by an access")

    # -- reserved and allowed ranges ------------------------------------------------
    def add_reserved(self, key, ranges):
        """Reserve inclusive IOVA ranges ``[(start, last), ...]`` under ``key``
        (a device attach, a domain's aperture, IOMMU_TEST ADD_RESERVED).

        EINVAL if a range has start > last; EADDRINUSE if a range meets an
        area or an allowed range (§7 ALLOW_IOVAS). Nothing changes on error.
        Ranges may overlap other reserved ranges.
        """
        ranges = [(int(s), int(l)) for s, l in ranges]
        for s, l in ranges:
            if s > l or s < 0 or l > U64_MAX:
                raise UapiError(errno.EINVAL, f"bad reserved range {s:#x}..{l:#x}")
            if self._first_area(s, l) is not None or self._allowed_intersects(s, l):
                raise UapiError(errno.EADDRINUSE, f"reserved {s:#x}..{l:#x} is in use")
        if not ranges:
            return
        self.reserved.add(key, ranges)
        for s, l in ranges:
            self.free.take(s, l)

    def remove_reserved(self, key):
        """Drop every range reserved under ``key`` (absent: no-op)."""
        if key not in self.reserved:
            return
        before = self.reserved.union
        self.reserved.pop(key)
        # Areas never overlap reserved ranges, so what no other owner still
        # reserves becomes free IOVA.
        for s, l in subtract(before, self.reserved.union):
            self.free.give(s, l)

    def set_allowed(self, ranges):
        """Replace the allowed list by ``ranges`` (validated, non-overlapping
        inclusive ranges); EADDRINUSE (old list kept) if one meets a
        reserved range. An empty list clears it."""
        ranges = sorted(ranges)
        for s, l in ranges:
            if self.reserved.intersects(s, l):
                raise UapiError(errno.EADDRINUSE, f"allowed {s:#x}..{l:#x} is reserved")
        self.allowed = ranges
        self._allowed_starts = [s for s, _ in ranges]
        self._allowed_lasts = [l for _, l in ranges]

    def iova_ranges(self):
        """The usable IOVA ranges: holes of the reserved ranges over
        ``[0, U64_MAX]`` (IOMMU_IOAS_IOVA_RANGES)."""
        return holes(self.reserved.union)

    # -- map / copy / unmap -----------------------------------------------------------
    def _check_fixed(self, iova, length):
        if iova & (self.iova_alignment - 1):
            raise UapiError(errno.EINVAL, f"IOVA {iova:#x} not aligned to {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "iova + length overflows")
        hole = self.free.containing(iova)
        if hole is not None and hole[1] >= last:
            return  # inside one hole: neither reserved nor mapped
        if self.reserved.intersects(iova, last):
            raise UapiError(errno.EINVAL, f"{iova:#x}..{last:#x} meets a reserved range")
        if self._first_area(iova, last) is not None:
            raise UapiError(errno.EEXIST, f"{iova:#x}..{last:#x} is already mapped")

    def _alloc(self, addr, length):
        iova, why = alloc_iova(self.free, self.allowed, length, addr, self.iova_alignment)
        if why == "overflow":
            raise UapiError(errno.EOVERFLOW, f"length {length:#x} too large to allocate")
        if why == "align":
            raise UapiError(errno.EINVAL, f"allocation alignment below {self.iova_alignment:#x}")
        if why == "nospace":
            raise UapiError(errno.ENOSPC, f"no free IOVA for {length:#x} bytes")
        return iova

    def _map_pieces(self, pieces, length, iova, fixed, prot):
        """The kernel's iopt_map_pages: place ``pieces`` (total ``length``)
        at ``iova`` or at an allocated IOVA, check, pin, fill the domains,
        then publish the areas. Returns the IOVA."""
        align = self.iova_alignment
        if length & (align - 1) or not length:
            raise UapiError(errno.EINVAL, f"length {length:#x} not a multiple of {align:#x}")
        if fixed:
            self._check_fixed(iova, length)
        else:
            # The first piece's source address guides the alignment (§7).
            iova = self._alloc(pieces[0].pages.source_addr(pieces[0].user_va), length)
        new = []
        cur = iova
        for p in pieces:
            if prot & PROT_WRITE and not p.pages.writable:
                raise UapiError(errno.EPERM, "WRITEABLE on memory registered read-only")
            if (p.user_va % PAGE_SIZE) & (align - 1):
                raise UapiError(errno.EINVAL, f"page offset of {p.user_va:#x} not a multiple of {align:#x}")
            new.append(Area(cur, p.length, p.user_va, prot, p.owner, p.pages))
            cur += p.length
        if self.domains:
            self._pin(new)
            self._fill(new, self.domains)
        owners = self.ctx.owners
        for area in new:
            area.pinned = bool(self.domains)
            owners.share(area.owner)
            area.pages.link(area)
            self.areas[area.iova] = area
            self.free.take(area.iova, area.last)
        return iova

    def map_user(self, owner, user_va, length, iova, prot, fixed):
        """Map ``length`` bytes of ``owner``'s memory at ``user_va`` (IOAS_MAP
        after its argument checks). ``prot``: PROT_READ|PROT_WRITE; the memory
        is registered writable exactly when PROT_WRITE is given. Returns the
        IOVA (``iova`` itself when ``fixed``). Takes its own owner reference.

        Errors in order (§7): EOVERFLOW user_va+length wraps; EINVAL length 0
        or too large, or not a multiple of iova_alignment; fixed: EINVAL
        misaligned IOVA, EOVERFLOW iova+length wraps, EINVAL reserved,
        EEXIST mapped; automatic: EOVERFLOW length >= 2**63, EINVAL alignment
        below iova_alignment, ENOSPC; EINVAL page offset misaligned; EFAULT
        memory not mappable when the IOAS has a domain.
        """
        if user_va + length > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "user_va + length overflows")
        if length == 0 or length > U64_MAX - PAGE_SIZE:
            raise UapiError(errno.EINVAL, f"length {length:#x}")
        pages = Pages(bool(prot & PROT_WRITE))
        return self._map_pieces([_Piece(pages, user_va, owner, length)], length, iova, fixed, prot)

    def map_file(self, owner, fd, start, length, iova, prot, fixed):
        """Map ``length`` bytes of the file open at ``fd`` (this process's
        duplicate of the caller's) from byte ``start`` (IOAS_MAP_FILE after
        its argument checks). The server maps the pages itself, shared, so
        they outlive the caller's view; ``owner`` is this process's Owner.
        Returns the IOVA.

        Errors in order (§7): EINVAL length 0; EOVERFLOW start+length wraps;
        EINVAL a file that is neither shmem (memfd, tmpfs) nor hugetlbfs, or
        a range past the end of the file (also after ftruncate); EPERM
        WRITEABLE on a file not open for writing (the 2026 rule of §7); then
        the IOVA and alignment rules of :meth:`map_user`, with the file
        offset as the source address.
        """
        if length == 0:
            raise UapiError(errno.EINVAL, "length 0")
        if start + length - 1 > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "start + length overflows")
        if filemem.fs_type(fd) not in (filemem.TMPFS_MAGIC, filemem.HUGETLBFS_MAGIC):
            raise UapiError(errno.EINVAL, "not a memfd, shmem or hugetlbfs file")
        if start + length > os.fstat(fd).st_size:
            raise UapiError(errno.EINVAL, f"{start:#x}+{length:#x} is past the end of the file")
        writable = bool(prot & PROT_WRITE)
        if writable and os.O_RDONLY == fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE:
            raise UapiError(errno.EPERM, "WRITEABLE on a file not open for writing")
        fm = filemem.FileMapping(fd, start, length, writable)
        pages = Pages(writable, fm)
        return self._map_pieces([_Piece(pages, fm.va(start), owner, length)], length, iova, fixed, prot)

    def map_dmabuf(self, owner, dmabuf, start, length, iova, prot, fixed):
        """Map ``length`` bytes of a dma-buf (core.mm.filemem.DmaBuf) from
        byte ``start``: ENODEV revoked; EINVAL length 0 or a range past its
        end; EOVERFLOW start+length wraps; then as :meth:`map_file`."""
        if dmabuf.revoked:
            raise UapiError(errno.ENODEV, "the dma-buf is revoked")
        if length == 0:
            raise UapiError(errno.EINVAL, "length 0")
        if start + length - 1 > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "start + length overflows")
        if start + length > dmabuf.size:
            raise UapiError(errno.EINVAL, f"{start:#x}+{length:#x} is past the end of the dma-buf")
        fm = filemem.FileMapping(dmabuf.fd, start, length, True)
        pages = Pages(bool(prot & PROT_WRITE), fm)
        return self._map_pieces([_Piece(pages, fm.va(start), owner, length)], length, iova, fixed, prot)

    def get_pages(self, iova, length):
        """The source side of IOAS_COPY: the runs of memory behind IOVA
        ``[iova, iova+length)``, which must be covered by contiguous areas
        (several allowed, starting and ending inside them).

        EINVAL length 0; EOVERFLOW iova+length wraps; ENOENT a hole.
        """
        if length == 0:
            raise UapiError(errno.EINVAL, "length 0")
        last = iova + length - 1
        if last > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "src_iova + length overflows")
        area = self.area_at(iova)
        pieces = []
        cur = iova
        while True:
            if area is None:
                raise UapiError(errno.ENOENT, f"IOVA {cur:#x} is not mapped")
            end = min(last, area.last)
            pieces.append(_Piece(area.pages, area.user_va + (cur - area.iova), area.owner, end - cur + 1))
            if end == last:
                return pieces
            cur = end + 1
            area = self.areas.get(cur)

    def copy_in(self, pieces, length, iova, prot, fixed):
        """Map ``pieces`` from :meth:`get_pages` of any IOAS of the context
        here, sharing their memory and owners (IOAS_COPY). One area per piece.
        Errors as :meth:`map_user` after its own first two, plus EPERM for
        PROT_WRITE on memory registered read-only."""
        return self._map_pieces(pieces, length, iova, fixed, prot)

    def _remove_area(self, area):
        for d in self.domains:
            d.unmap(area.iova, area.length)
        del self.areas[area.iova]
        self.free.give(area.iova, area.last)
        area.pages.unlink(area)
        self.ctx.owners.release(area.owner)

    def _unmap_range(self, start, last):
        # Areas go one by one in ascending IOVA and an error stops the walk
        # without undoing what went before (§7 IOAS_UNMAP).
        total = 0
        for area in self.areas_in(start, last):
            if area.locks:
                raise UapiError(errno.EBUSY, f"{area!r} is locked")
            if area.iova < start or area.last > last:
                raise UapiError(errno.ENOENT, f"{area!r} is not inside {start:#x}..{last:#x}")
            if self.access_pins and area in self.access_pins:
                self._notify_unmap(area)
            self._remove_area(area)
            total += area.length
        return total

    def unmap(self, iova, length):
        """Unmap every area inside IOVA ``[iova, iova+length)``; returns the
        bytes unmapped (0 when nothing was there).

        EINVAL length 0; EOVERFLOW iova+length wraps; EBUSY a locked area;
        ENOENT an area only partly inside (areas are never split). Areas
        before the failing one stay unmapped, as in the kernel.
        """
        if length == 0:
            raise UapiError(errno.EINVAL, "length 0")
        last = iova + length - 1
        if last > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "iova + length overflows")
        return self._unmap_range(iova, last)

    def unmap_all(self):
        """Unmap every area; returns the bytes unmapped (EBUSY if locked)."""
        return self._unmap_range(0, U64_MAX)

    # -- VFIO type1 compatibility (§11.4): split areas, report partial unmaps -------------
    def split_at(self, iova):
        """Cut the area holding IOVA ``iova`` in two, ``iova`` being the last
        byte of the first piece (the kernel's iopt_area_split, which VFIO type1
        v1 UNMAP_DMA runs at the ends of the range, §11.4).

        Nothing to do when no area holds ``iova`` or ``iova`` is the area's
        first or last byte (the kernel does not cut a one-byte piece off the
        front either). EINVAL when ``iova + 1`` or the page offset of its
        memory is not a multiple of iova_alignment, when the area is locked
        (held by an in-kernel access), or when a domain holds it while large
        pages are enabled (a huge IOPTE cannot be cut). Nothing changes on
        error.

        Both pieces keep the area's memory (the same :class:`Pages`), prot and
        pin state; each holds its own owner reference. IOVA stays in use and
        the domains' page tables stay as they are: the translation of every
        byte is unchanged, only the bookkeeping of what one unmap removes.
        """
        area = self.area_at(iova)
        if area is None or iova == area.iova or iova == area.last:
            return
        off = iova + 1 - area.iova
        mask = self.iova_alignment - 1
        if (iova + 1) & mask or ((area.user_va + off) % PAGE_SIZE) & mask:
            raise UapiError(errno.EINVAL, f"cut of {area!r} at {iova + 1:#x} is not aligned to {mask + 1:#x}")
        if area.locks or area in self.access_pins:
            raise UapiError(errno.EINVAL, f"{area!r} is used by an in-kernel access")
        if area.pinned and self.domains and not self.disable_large_pages:
            raise UapiError(errno.EINVAL, f"{area!r} may be mapped with huge pages")
        pieces = (Area(area.iova, off, area.user_va, area.prot, area.owner, area.pages),
                  Area(iova + 1, area.length - off, area.user_va + off, area.prot, area.owner, area.pages))
        area.pages.unlink(area)
        for piece in pieces:
            piece.pinned = area.pinned
            area.pages.link(piece)
            self.areas[piece.iova] = piece
        # The area's owner reference goes to the first piece; the second takes one.
        self.ctx.owners.share(area.owner)

    def unmap_counted(self, iova, length):
        """:meth:`unmap` (``length`` None: :meth:`unmap_all`) reporting like the
        kernel's iopt_unmap_iova, which VFIO_IOMMU_UNMAP_DMA writes back even
        on failure (§11.4): returns ``(bytes, error)``, ``error`` being the
        UapiError that stopped the walk (None on success) and ``bytes`` what
        was unmapped before it (areas removed stay removed)."""
        if length is None:
            start, last = 0, U64_MAX
        else:
            start, last = iova, min(iova + max(length, 1) - 1, U64_MAX)
        before = self.areas_in(start, last)
        try:
            n = self.unmap_all() if length is None else self.unmap(iova, length)
        except UapiError as e:
            return sum(a.length for a in before if self.areas.get(a.iova) is not a), e
        return n, None

    def set_large_pages(self, enable):
        """IOMMU_OPTION HUGE_PAGES SET (§7). Disabling: no-op if already
        disabled; EINVAL if the IOAS has both a domain and an area;
        EADDRINUSE if an area is not PAGE_SIZE aligned (nothing changed).
        Enabling always succeeds."""
        if enable:
            self.disable_large_pages = False
            self._recalc_alignment()
            return
        if self.disable_large_pages:
            return
        if self.domains and self.areas:
            raise UapiError(errno.EINVAL, "domains already hold mappings")
        self.disable_large_pages = True
        try:
            self._recalc_alignment()
        except UapiError:
            self.disable_large_pages = False
            raise

    def destroy(self):
        """Unmap every area (from the domains too) and release the owners."""
        for area in list(self.areas.values()):
            self._remove_area(area)
        for d in list(self.domains):
            self.remove_domain(d)


# -- ioctl handlers ------------------------------------------------------------------------
@ioctl(uapi.IOMMU_IOAS_ALLOC, "iommu_ioas_alloc", "out_ioas_id")
def ioas_alloc(ctx, caller, cmd):
    """IOMMU_IOAS_ALLOC (§5): EOPNOTSUPP if ``flags`` != 0. The new IOAS's
    ID is returned in ``out_ioas_id`` and published when the call succeeds."""
    if cmd.flags:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x}")
    cmd.out_ioas_id = ctx.add(Ioas(ctx))


@ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, "iommu_ioas_iova_ranges", "out_iova_alignment")
def ioas_iova_ranges(ctx, caller, cmd):
    """IOMMU_IOAS_IOVA_RANGES (§7): EOPNOTSUPP ``__reserved``; ENOENT bad
    ioas_id; EFAULT an entry of ``allowed_iovas`` not writable (entries are
    written one by one, as far as ``num_iovas`` allows); EMSGSIZE when more
    ranges exist than ``num_iovas`` — the struct, with the total in
    ``num_iovas`` and ``out_iova_alignment``, is written back all the same."""
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    ioas = ctx.get(cmd.ioas_id, Ioas)
    capacity = cmd.num_iovas
    ranges = ioas.iova_ranges()
    cmd.num_iovas = 0
    cmd.out_iova_alignment = ioas.iova_alignment
    for i, (start, last) in enumerate(ranges[:capacity]):
        caller.mem.write(cmd.allowed_iovas + i * _RANGE.size, _RANGE.pack(start, last))
    cmd.num_iovas = len(ranges)
    if len(ranges) > capacity:
        raise respond_anyway(errno.EMSGSIZE, f"{len(ranges)} ranges > {capacity}")


def _read_ranges(mem, ptr, n):
    """Yield the ``n`` iommu_iova_range entries at ``ptr`` in order, raising
    EFAULT at the first unreadable one (entries before it are yielded first,
    so the caller's per-entry checks keep the kernel's order)."""
    i = 0
    while i < n:
        k = min(_RANGE_BATCH, n - i)
        try:
            data = mem.read(ptr + i * _RANGE.size, k * _RANGE.size)
        except UapiError:
            # Some entry of the batch faults: find which, one entry at a time.
            for j in range(k):
                yield _RANGE.unpack(mem.read(ptr + (i + j) * _RANGE.size, _RANGE.size))
        else:
            for j in range(k):
                yield _RANGE.unpack_from(data, j * _RANGE.size)
        i += k


@ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, "iommu_ioas_allow_iovas", "allowed_iovas")
def ioas_allow_iovas(ctx, caller, cmd):
    """IOMMU_IOAS_ALLOW_IOVAS (§7): EOPNOTSUPP ``__reserved``; ENOENT bad
    ioas_id; then per entry in order: EFAULT unreadable, EINVAL start >= last,
    EINVAL overlaps an earlier entry; finally EADDRINUSE if an entry meets a
    reserved range. The list is replaced atomically; num_iovas 0 clears it."""
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    ioas = ctx.get(cmd.ioas_id, Ioas)
    seen = SortedDict()
    for start, last in _read_ranges(caller.mem, cmd.allowed_iovas, cmd.num_iovas):
        if start >= last:
            raise UapiError(errno.EINVAL, f"allowed range {start:#x}..{last:#x}")
        i = seen.bisect_right(last) - 1
        if i >= 0 and seen.peekitem(i)[1] >= start:
            raise UapiError(errno.EINVAL, f"allowed range {start:#x}..{last:#x} overlaps")
        seen[start] = last
    ioas.set_allowed(list(seen.items()))


def adopt(ctx, pages):
    """The process that owned ``pages`` (pinned shared memory, held: see
    ``Pages.held``) has exited: its areas become memory of the server's own
    mapping of the held object, in every IOAS of ``ctx`` and every domain,
    as the kernel's pinned pages stay after their process. Returns False
    when there is nothing to adopt (private memory, or never pinned)."""
    held = pages.held
    if held is None or pages.file is not None:
        return False
    areas = list(pages.areas())
    lo = min(a.user_va for a in areas)
    hi = max(a.user_va + a.length for a in areas)
    fm = filemem.FileMapping(held.fd, held.offset_of(lo), hi - lo, held.writable)
    pages.file, pages.held = fm, None
    server = ctx.owners.hold(_SERVER)
    try:
        for obj in list(ctx.objects.values()):
            if not isinstance(obj, Ioas):
                continue
            for area in [a for a in areas if obj.areas.get(a.iova) is a]:
                va = fm.va(held.offset_of(area.user_va))
                huge = not obj.disable_large_pages
                for d in obj.domains:
                    d.unmap(area.iova, area.length)
                    d.map(area.iova, va, area.length, area.prot, huge, owner=server)
                old, area.owner, area.user_va = area.owner, ctx.owners.share(server), va
                ctx.owners.release(old)
    finally:
        ctx.owners.release(server)
    return True


def adopt_owner(ctx, owner):
    """:func:`adopt` every held memory of ``owner`` (a process that has
    exited) in the IOASes of ``ctx``. Returns True if any was adopted."""
    pages = {a.pages for o in list(ctx.objects.values()) if isinstance(o, Ioas)
             for a in o.areas.values() if a.owner is owner}
    return any([adopt(ctx, p) for p in pages])


def _map_checks(flags, reserved, *u64s):
    """The checks MAP, MAP_FILE and COPY share, in the kernel's order (§7):
    EOPNOTSUPP unknown flags (or MAP's ``__reserved``), EOVERFLOW an
    IOVA/length >= ULONG_MAX, EINVAL neither READABLE nor WRITEABLE."""
    if flags & ~MAP_FLAGS or reserved:
        raise UapiError(errno.EOPNOTSUPP, f"flags {flags:#x} / __reserved")
    if max(u64s) >= ULONG_MAX:
        raise UapiError(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
    if not flags & _RW:
        raise UapiError(errno.EINVAL, "neither READABLE nor WRITEABLE")


@ioctl(uapi.IOMMU_IOAS_MAP, "iommu_ioas_map", "iova")
def ioas_map(ctx, caller, cmd):
    """IOMMU_IOAS_MAP (§7): after :func:`_map_checks`, ENOENT bad ioas_id,
    then the rules of :meth:`Ioas.map_user`. ``iova`` is written back (the
    chosen one without FIXED_IOVA)."""
    flags, length, iova = cmd.flags, cmd.length, cmd.iova
    _map_checks(flags, cmd.__reserved, iova, length)
    ioas = ctx.get(cmd.ioas_id, Ioas)
    owner = ctx.owners.hold(caller)
    try:
        cmd.iova = ioas.map_user(owner, cmd.user_va, length, iova, map_prot(flags),
                                 bool(flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA))
    finally:
        ctx.owners.release(owner)


class _Server:
    """This process as the caller of OwnerTable.hold: MAP_FILE's memory is
    the server's own mapping of the file. Asked each time, so that a
    process forked after import is itself."""

    @property
    def tgid(self):
        return os.getpid()

    @property
    def uid(self):
        return os.getuid()


_SERVER = _Server()


@ioctl(uapi.IOMMU_IOAS_MAP_FILE, "iommu_ioas_map_file", "iova")
def ioas_map_file(ctx, caller, cmd):
    """IOMMU_IOAS_MAP_FILE (§7): after :func:`_map_checks` (no
    ``__reserved`` in this struct), ENOENT bad ioas_id, EBADF ``fd`` not an
    open fd of the caller (the transport takes a duplicate with
    pidfd_getfd), then the rules of :meth:`Ioas.map_file`. ``iova`` is
    written back (the chosen one without FIXED_IOVA)."""
    flags, length, iova = cmd.flags, cmd.length, cmd.iova
    _map_checks(flags, 0, iova, length)
    ioas = ctx.get(cmd.ioas_id, Ioas)
    if cmd.fd < 0:
        raise UapiError(errno.EBADF, f"fd {cmd.fd}")
    f = caller.fd(cmd.fd, CallerFile)
    # A dma-buf fd of this mount resolves to its object (the selftest's
    # DMABUF_GET): its memory is a memfd the server holds.
    dmabuf = getattr(f, "dmabuf", None)
    owner = ctx.owners.hold(_SERVER)
    try:
        fixed = bool(flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA)
        if dmabuf is not None:
            cmd.iova = ioas.map_dmabuf(owner, dmabuf, cmd.start, length, iova, map_prot(flags), fixed)
        elif isinstance(f, CallerFile):
            cmd.iova = ioas.map_file(owner, f.fd, cmd.start, length, iova, map_prot(flags), fixed)
        else:
            raise UapiError(errno.EINVAL, "not a file whose pages can be pinned")
    finally:
        ctx.owners.release(owner)


@ioctl(uapi.IOMMU_IOAS_COPY, "iommu_ioas_copy", "src_iova")
def ioas_copy(ctx, caller, cmd):
    """IOMMU_IOAS_COPY (§7): after :func:`_map_checks` (on length, src_iova
    and dst_iova), the source is resolved first — ENOENT bad src_ioas_id,
    then :meth:`Ioas.get_pages` (EINVAL/EOVERFLOW/ENOENT) — then ENOENT bad
    dst_ioas_id, then :meth:`Ioas.copy_in` (EPERM WRITEABLE from read-only
    memory, alignment, IOVA and pinning rules). ``dst_iova`` is written back.
    """
    _map_checks(cmd.flags, 0, cmd.length, cmd.src_iova, cmd.dst_iova)
    src = ctx.get(cmd.src_ioas_id, Ioas)
    pieces = src.get_pages(cmd.src_iova, cmd.length)
    dst = ctx.get(cmd.dst_ioas_id, Ioas)
    cmd.dst_iova = dst.copy_in(pieces, cmd.length, cmd.dst_iova, map_prot(cmd.flags),
                               bool(cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA))


@ioctl(uapi.IOMMU_IOAS_UNMAP, "iommu_ioas_unmap", "length")
def ioas_unmap(ctx, caller, cmd):
    """IOMMU_IOAS_UNMAP (§7): ENOENT bad ioas_id (before anything else);
    ``iova == 0 && length == U64_MAX`` unmaps everything (0 bytes is
    success); otherwise EOVERFLOW iova/length >= ULONG_MAX, then
    :meth:`Ioas.unmap`, and ENOENT if nothing was unmapped. ``length`` is
    written back with the bytes unmapped."""
    ioas = ctx.get(cmd.ioas_id, Ioas)
    if cmd.iova == 0 and cmd.length == U64_MAX:
        cmd.length = ioas.unmap_all()
        return
    if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
        raise UapiError(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
    n = ioas.unmap(cmd.iova, cmd.length)
    if not n:
        raise UapiError(errno.ENOENT, f"nothing mapped in {cmd.iova:#x}+{cmd.length:#x}")
    cmd.length = n


def _respond_val64(arg, cdata, size):
    # IOMMU_OPTION copies only val64 back (§3 step 6 exception).
    off = ffi.offsetof("struct iommu_option", "val64")
    arg.write(off, ffi.buffer(cdata)[off:off + 8])


def _ctx_empty(ctx):
    """No object and no reserved ID at all (RLIMIT_MODE SET, §4)."""
    return not (ctx.objects or ctx.pending)


@ioctl(uapi.IOMMU_OPTION, "iommu_option", "val64", respond=_respond_val64)
def iommu_option(ctx, caller, cmd):
    """IOMMU_OPTION (§7): EOPNOTSUPP ``__reserved`` or unknown option_id.

    RLIMIT_MODE: EOPNOTSUPP object_id != 0; GET: val64 = 1 in MM mode;
    SET: EPERM without CAP_SYS_RESOURCE (modelled as uid != 0), EBUSY if the
    context holds anything, EINVAL val64 not 0/1; other op EOPNOTSUPP.
    HUGE_PAGES: ENOENT object_id not an IOAS (before the op is looked at);
    GET: val64 = large pages enabled; SET: :meth:`Ioas.set_large_pages`,
    EINVAL val64 not 0/1; other op EOPNOTSUPP.
    Only ``val64`` is written back, on success.
    """
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    if cmd.option_id == uapi.IOMMU_OPTION_RLIMIT_MODE:
        if cmd.object_id:
            raise UapiError(errno.EOPNOTSUPP, "RLIMIT_MODE is global: object_id must be 0")
        if cmd.op == uapi.IOMMU_OPTION_OP_GET:
            cmd.val64 = 1 if ctx.rlimit_mm else 0
            return
        if cmd.op == uapi.IOMMU_OPTION_OP_SET:
            if caller.uid != 0:
                raise UapiError(errno.EPERM, "RLIMIT_MODE SET needs CAP_SYS_RESOURCE")
            if not _ctx_empty(ctx):
                raise UapiError(errno.EBUSY, "RLIMIT_MODE SET on a non-empty context")
            if cmd.val64 not in (0, 1):
                raise UapiError(errno.EINVAL, f"RLIMIT_MODE value {cmd.val64}")
            ctx.rlimit_mm = cmd.val64 == 1
            return
        raise UapiError(errno.EOPNOTSUPP, f"op {cmd.op}")
    if cmd.option_id == uapi.IOMMU_OPTION_HUGE_PAGES:
        ioas = ctx.get(cmd.object_id, Ioas)
        if cmd.op == uapi.IOMMU_OPTION_OP_GET:
            cmd.val64 = 0 if ioas.disable_large_pages else 1
            return
        if cmd.op == uapi.IOMMU_OPTION_OP_SET:
            if cmd.val64 not in (0, 1):
                raise UapiError(errno.EINVAL, f"HUGE_PAGES value {cmd.val64}")
            ioas.set_large_pages(cmd.val64 == 1)
            return
        raise UapiError(errno.EOPNOTSUPP, f"op {cmd.op}")
    raise UapiError(errno.EOPNOTSUPP, f"option {cmd.option_id}")


@ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, "iommu_ioas_change_process", "__reserved")
def ioas_change_process(ctx, caller, cmd):
    """IOMMU_IOAS_CHANGE_PROCESS (§7): EOPNOTSUPP ``__reserved``; EINVAL an
    area mapped from process memory (IOAS_MAP, IOAS_COPY of it) in any IOAS
    of the context, since only file pages can change owner. With none, the
    pinned-page accounting of the file areas would move to the caller; the
    emulator accounts no pins to processes (§15), so this succeeds with
    nothing to move, which is also the no-op QEMU probes for."""
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    for obj in ctx.objects.values():
        if isinstance(obj, Ioas) and any(a.pages.file is None for a in obj.areas.values()):
            raise UapiError(errno.EINVAL, f"IOAS {obj.id} has areas of process memory")
