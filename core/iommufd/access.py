"""ACCESS objects: in-kernel users of an IOAS (reference §4, §7, §12).

A kernel driver without an IOMMU of its own (an emulated mdev, the HW queue
of a vIOMMU, the selftest's access) reads and writes a device's IOVA space
through the IOAS itself: the kernel's ``iommufd_access``. It takes an object
ID (finalized at once, not destroyable by IOMMU_DESTROY: EBUSY), holds a
reference on its IOAS (so IOMMU_DESTROY of the IOAS is EBUSY), and, when it
pins pages, raises the IOAS's iova_alignment to PAGE_SIZE (§7).

Pinning (:meth:`Access.pin_pages`) takes the pages behind a contiguous IOVA
range and keeps them pinned until :meth:`Access.unpin` — the areas involved
count their pins (``Ioas.access_pins``): IOAS_UNMAP of such an area first
calls the access's ``unmap`` callback, which must unpin (§7 IOAS_UNMAP).
:meth:`Access.rw` moves bytes between a buffer and the memory behind an
IOVA range, with no domain needed.

Units: IOVA, lengths and user VAs in bytes.
"""
import errno

from cext._native import ffi

from ..errors import UapiError
from ..mm.iova import PAGE_SIZE, U64_MAX
from . import ioas as _ioas
from .context import Obj


class Pin:
    """What one successful :meth:`Access.pin_pages` holds: ``iova``,
    ``length``, the ``ioas`` and ``pieces`` [(area, user_va, length)] — the
    run of each area's memory it pinned, in IOVA order."""

    __slots__ = ("iova", "length", "ioas", "pieces")

    def __init__(self, iova, length, ioas, pieces):
        self.iova = iova
        self.length = length
        self.ioas = ioas
        self.pieces = pieces


class Access(Obj):
    """An in-kernel access to one IOAS (``ioas``; None only while being
    torn down). ``needs_pin``: the driver pins pages (iova_alignment
    PAGE_SIZE, else 1); ``unmap``: the driver's callback
    ``unmap(iova, length)``, called when IOVA it may have pinned goes away
    (set by the owner; the default unpins nothing); ``pins``: the live
    :class:`Pin` objects, for the IOAS's bookkeeping."""

    kind = "ACCESS"
    user_destroyable = False

    def __init__(self, ctx, needs_pin):
        super().__init__(ctx)
        self.needs_pin = needs_pin
        self.iova_alignment = PAGE_SIZE if needs_pin else 1
        self.ioas = None
        self.pins = []
        self.unmap = lambda iova, length: None

    # -- the IOAS ----------------------------------------------------------------
    def change_ioas(self, ioas):
        """Attach to ``ioas``, leaving the current one (the kernel's
        iommufd_access_change_ioas): the same IOAS is a no-op; EADDRINUSE
        when an area of the new IOAS is not aligned to the access's
        alignment (nothing changes). Leaving an IOAS first calls ``unmap``
        over all of it, which must release every pin."""
        cur = self.ioas
        if cur is ioas:
            return
        ioas.add_access(self)
        ioas.get()
        if cur is not None:
            self.unmap(0, U64_MAX)
            self._leave(cur)
        self.ioas = ioas

    def _leave(self, ioas):
        for pin in list(self.pins):
            self.unpin(pin)
        ioas.remove_access(self)
        ioas.put()

    def destroy(self):
        if self.ioas is not None:
            ioas, self.ioas = self.ioas, None
            self._leave(ioas)

    # -- pinning -------------------------------------------------------------------
    def _contig_areas(self, iova, length):
        """The areas covering IOVA ``[iova, iova+length)`` in order, each
        with the part of it used: [(area, start, last)]. EINVAL length 0;
        EOVERFLOW the range wraps; ENOENT no IOAS. A hole ends the list early
        (the caller reports ENOENT after dealing with what came before, as
        the kernel's contiguous-area iterator does)."""
        if length == 0:
            raise UapiError(errno.EINVAL, "length 0")
        last = iova + length - 1
        if last > U64_MAX:
            raise UapiError(errno.EOVERFLOW, "iova + length overflows")
        if self.ioas is None:
            raise UapiError(errno.ENOENT, "the access has no IOAS")
        out = []
        ioas = self.ioas
        area = ioas.area_at(iova)
        cur = iova
        while area is not None:
            end = min(last, area.last)
            out.append((area, cur, end))
            if end == last:
                break
            cur = end + 1
            area = ioas.areas.get(cur)
        return out, last

    def pin_pages(self, iova, length, write):
        """Pin the pages behind IOVA ``[iova, iova+length)`` (the kernel's
        iommufd_access_pin_pages); ``write``: the caller will write them.
        Returns the :class:`Pin`, kept until :meth:`unpin`.

        Errors in order: EINVAL length 0; EOVERFLOW; ENOENT no IOAS; then per
        area in IOVA order: EINVAL a piece boundary inside the range is not
        page-aligned in memory, EPERM the area lacks the permission, EFAULT
        memory not pinned yet is not there (readable, and writable when
        registered writable); finally ENOENT a hole in the range. Nothing is
        pinned on error.
        """
        runs, last = self._contig_areas(iova, length)
        need = _ioas.PROT_WRITE if write else _ioas.PROT_READ
        pieces = []
        for i, (area, start, end) in enumerate(runs):
            va = area.user_va + (start - area.iova)
            n = end - start + 1
            # iopt_area_contig_is_aligned: pieces meet at page boundaries.
            if start != iova and va % PAGE_SIZE:
                raise UapiError(errno.EINVAL, f"IOVA {start:#x} starts mid-page in memory")
            if end != last and (va + n) % PAGE_SIZE:
                raise UapiError(errno.EINVAL, f"IOVA {end:#x} ends mid-page in memory")
            if not area.prot & need:
                raise UapiError(errno.EPERM, f"{area!r} lacks {'write' if write else 'read'}")
            if not area.pinned:
                # Memory a domain holds is pinned already; the rest is pinned now.
                lo = va - va % PAGE_SIZE
                self.ioas.check_pinnable(area, lo, -(-(va + n - lo) // PAGE_SIZE) * PAGE_SIZE)
            pieces.append((area, va, n))
        if not runs or runs[-1][2] != last:
            raise UapiError(errno.ENOENT, f"IOVA {iova:#x}+{length:#x} is not all mapped")
        pin = Pin(iova, length, self.ioas, pieces)
        counts = self.ioas.access_pins
        for area, _, _ in pieces:
            counts[area] = counts.get(area, 0) + 1
        self.pins.append(pin)
        return pin

    def unpin(self, pin):
        """Release a :class:`Pin` (the kernel's iommufd_access_unpin_pages)."""
        self.pins.remove(pin)
        counts = pin.ioas.access_pins
        for area, _, _ in pin.pieces:
            n = counts[area] - 1
            if n:
                counts[area] = n
            else:
                del counts[area]

    # -- byte access ---------------------------------------------------------------
    def rw(self, iova, data, write):
        """Read (``write`` False: returns ``len(data)`` bytes; ``data`` gives
        the length, e.g. a bytearray) or write ``data`` at IOVA ``iova``
        (the kernel's iommufd_access_rw), byte-granular, domain or not.

        Errors in order: EINVAL length 0; EOVERFLOW; ENOENT no IOAS; then per
        area in IOVA order: EPERM the area lacks the permission (or, for a
        write, its memory was registered read-only), EFAULT the memory is not
        there; finally ENOENT a hole. A write that fails part-way leaves the
        bytes of the areas before the failure written, as the kernel does.
        """
        length = len(data)
        runs, last = self._contig_areas(iova, length)
        need = _ioas.PROT_WRITE if write else _ioas.PROT_READ
        local = ffi.from_buffer(data) if write else ffi.new("char[]", length)
        seg = ffi.new("struct iofs_seg[1]")
        done = 0
        for area, start, end in runs:
            if not area.prot & need or (write and not area.pages.writable):
                raise UapiError(errno.EPERM, f"{area!r} lacks {'write' if write else 'read'}")
            n = end - start + 1
            seg[0].addr = area.user_va + (start - area.iova)
            seg[0].len = n
            try:
                moved = area.owner.rw_segments(seg, 1, local + done, write)
            except UapiError:
                # Its process has exited: shared memory it pinned lives on.
                if not area.owner.alive() and _ioas.adopt(self.ctx, area.pages):
                    seg[0].addr = area.user_va + (start - area.iova)
                    moved = area.owner.rw_segments(seg, 1, local + done, write)
                else:
                    moved = 0
            if moved != n:
                raise UapiError(errno.EFAULT, f"memory behind IOVA {start:#x} is not there")
            done += n
        if not runs or runs[-1][2] != last:
            raise UapiError(errno.ENOENT, f"IOVA {iova:#x}+{length:#x} is not all mapped")
        return b"" if write else ffi.buffer(local, length)[:]


__all__ = ["Access", "Pin"]
