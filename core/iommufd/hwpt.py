"""HWPT objects (I/O page tables) and IOMMU_HWPT_ALLOC (reference §9.1).

A paging HWPT is a domain of one IOAS: it holds a C radix page table
(cext.pagetable) that mirrors the IOAS's areas, translating IOVA to the
owner's virtual address. Devices attach to HWPTs (core.iommufd.device).

The output address of an entry carries, above any user virtual address
(bit 57 up: user space ends below 2**56 even with 5-level paging), a small
tag naming the process that owns the mapping, so a DMA learns the owner of
each translated segment from the translation itself. Tag 0 is "look it up
in the IOAS": a HWPT with more owning processes than tags.
"""
import errno
from dataclasses import dataclass

from cext.pagetable import PTE_READ, PTE_WRITE, IOPageFault, PageTable

from .. import uapi
from ..errors import DmaFault, UapiError
from ..mm.iova import U64_MAX
from .context import Obj
from .fault import FaultQueue
from .ioas import Ioas
from .ucmd import ioctl, respond_anyway

_TAG_SHIFT = 57
_VA_MASK = (1 << _TAG_SHIFT) - 1
_TAGS = 64              # tags 1..63: bit 63 stays clear

@dataclass(frozen=True)
class PagingFormat:
    """A page-table format an IOMMU driver offers for paging HWPTs chosen by
    driver data (the selftest mock's ``pagetable_type``): ``name``, the
    domain's smallest page ``page_size`` (its IOVA alignment, bytes), its
    inclusive ``aperture`` and the IOVA bits of its table ``ias_bits``."""

    name: str
    page_size: int
    aperture: tuple
    ias_bits: int


PAGING_FLAGS = (uapi.IOMMU_HWPT_ALLOC_NEST_PARENT | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                | uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID)
NESTED_FLAGS = uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID


class HwptPaging(Obj):
    """A paging HWPT: an I/O page table filled from its IOAS.

    ``ioas``: the IOAS it is a domain of (holds a ref); ``iommu``: the
    topology's IommuModel it was made for; ``flags``: the IOMMU_HWPT_ALLOC
    flags (NEST_PARENT, DIRTY_TRACKING, PASID are recorded: nesting, dirty
    tracking and PASID routing use them); ``auto``: created by attaching a
    device to an IOAS id, destroyed when its last device leaves (§4).
    ``page_size``: smallest page in bytes and ``aperture``: inclusive IOVA
    range it translates (the domain interface of core.iommufd.ioas).
    """

    kind = "HWPT_PAGING"

    def __init__(self, ctx, ioas, iommu, flags=0, auto=False, fmt=None):
        super().__init__(ctx)
        self.ioas = ioas
        self.iommu = iommu
        self.flags = flags
        self.auto = auto
        self.fmt = fmt
        self.page_size = fmt.page_size if fmt else iommu.granule
        self.aperture = fmt.aperture if fmt else iommu.aperture
        self.pt = PageTable(granule=iommu.granule,
                            ias_bits=fmt.ias_bits if fmt else iommu.address_width,
                            max_leaf_level=iommu.max_leaf_level)
        # SET_DIRTY_TRACKING's state. The table's dirty bits follow every
        # device write regardless; enabling clears them first, so what a
        # read reports is what was written since (§9.3).
        self.dirty_tracking = False
        self.fault = None
        self.in_ioas = False
        self._tag_of = {}                  # Owner -> tag
        self._owner_of = [None] * _TAGS    # tag -> Owner

    @property
    def pasid_compat(self):
        return bool(self.flags & uapi.IOMMU_HWPT_ALLOC_PASID)

    @property
    def dirty_ops(self):
        """The domain can track dirty pages: it was allocated with
        IOMMU_HWPT_ALLOC_DIRTY_TRACKING (the driver gives it dirty ops)."""
        return bool(self.flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)

    # -- dirty tracking (§9.3) ----------------------------------------------------
    def set_dirty_tracking(self, enable):
        """Start (clearing every dirty bit first, as iopt_set_dirty_tracking
        does) or stop tracking."""
        if enable:
            self.pt.dirty(0, 1 << self.pt.ias_bits, self.pt.granule, clear=True, bitmap=False)
        self.dirty_tracking = bool(enable)

    def read_dirty(self, iova, length, page_shift, bitmap, clear):
        """OR into ``bitmap`` (bytes-like, bit k = IOVA ``iova + (k <<
        page_shift)``) the pages under dirty leaves in ``[iova,
        iova+length)``, clearing those leaves unless ``clear`` is false.
        Returns the bitmap. Range beyond the table: nothing."""
        page = 1 << page_shift
        end = min(iova + length, 1 << self.pt.ias_bits)
        if end <= iova:
            return bitmap
        # The table walks whole pages; the end of a covered run of areas
        # need not be page-aligned (areas are iova_alignment-aligned).
        end = min(-(-end // page) * page, 1 << self.pt.ias_bits)
        self.pt.dirty(iova, end - iova, page, clear=clear, bitmap=bitmap)
        return bitmap

    # -- the domain interface used by core.iommufd.ioas --------------------------------
    def map(self, iova, user_va, length, prot, huge, owner=None):
        """Install [iova, iova+length) -> user_va of ``owner`` (a
        core.mm.usermem.Owner) with ``prot`` (READ=1, WRITE=2)."""
        self.pt.map(iova, self._tag(owner) << _TAG_SHIFT | user_va, length, prot, huge=huge)

    def _tag(self, owner):
        tag = self._tag_of.get(owner)
        if tag is not None or owner is None:
            return tag or 0
        free = [t for t in range(1, _TAGS) if self._owner_of[t] is None]
        if not free:
            # Owners with no area left in the IOAS have no entry left either.
            live = {a.owner for a in self.ioas.areas.values()} | {owner}
            for t in range(1, _TAGS):
                if self._owner_of[t] not in live:
                    del self._tag_of[self._owner_of[t]]
                    self._owner_of[t] = None
            free = [t for t in range(1, _TAGS) if self._owner_of[t] is None]
            if not free:
                return 0
        self._tag_of[owner] = free[0]
        self._owner_of[free[0]] = owner
        return free[0]

    def untag(self, addr):
        """An output address of the page table -> ``(owner or None, va)``
        (None: tag 0, look the owner up in the IOAS)."""
        return self._owner_of[addr >> _TAG_SHIFT], addr & _VA_MASK

    def unmap(self, iova, length):
        """Remove the translations of [iova, iova+length); returns bytes removed."""
        return self.pt.unmap(iova, length)

    def dma_pieces(self, iova, length, access):
        """Translate IOVA ``[iova, iova+length)`` for ``access`` (READ=1,
        WRITE=2) through the page table, cut where the owner changes (the
        translation's tag says): ``[(owner, [(va, len)])]``
        (core.mm.usermem.Owner, bytes).
        A/D bits are set only if all of it translates. Raises
        core.errors.DmaFault EFAULT (no translation) / EACCES (permission) with
        the first failing IOVA."""
        try:
            segs = self.pt.translate_range(iova, length, access)
        except OSError as e:
            raise DmaFault(e.errno, getattr(e, "iova", iova)) from None
        pieces = []
        pos = iova
        owner_of = self._owner_of
        for addr, n in segs:
            owner = owner_of[addr >> _TAG_SHIFT]
            if owner is not None:
                va = addr & _VA_MASK
                if pieces and pieces[-1][0] is owner:
                    pieces[-1][1].append((va, n))
                else:
                    pieces.append((owner, [(va, n)]))
                pos += n
                continue
            # Tag 0: segments may span areas of several owners.
            while n:
                area = self.ioas.area_at(pos)
                take = min(n, area.iova + area.length - pos)
                if pieces and pieces[-1][0] is area.owner:
                    pieces[-1][1].append((addr, take))
                else:
                    pieces.append((area.owner, [(addr, take)]))
                pos += take
                addr += take
                n -= take
        return pieces

    def missing_pages(self, iova, length, access):
        """The pages (IOVA, page_size aligned) of ``[iova, iova+length)``
        that do not translate for ``access``: what a PRI device asks for in
        one page request group. Sets no A/D bit."""
        need = (PTE_WRITE if access & 2 else 0) | (PTE_READ if access & 1 else 0)
        ps = self.page_size
        out = []
        page = iova - iova % ps
        while page < iova + length:
            try:
                ok = self.pt.get_ad(page) & need == need
            except IOPageFault:
                ok = False
            if not ok:
                out.append(page)
            page += ps
        return out

    # -- lifetime ----------------------------------------------------------------
    def join_ioas(self):
        """Become a domain of the IOAS: every area is checked and mapped.

        Raises EINVAL (page size), EADDRINUSE (misaligned areas), EFAULT (a
        lazy mapping whose memory is gone) with nothing changed (§7, §8).
        """
        self.ioas.add_domain(self)
        self.in_ioas = True
        self.ioas.get()

    def destroy(self):
        if self.in_ioas:
            self.ioas.remove_domain(self)
            self.ioas.put()
            self.in_ioas = False
        if self.fault is not None:
            self.fault.put()
            self.fault = None
        self.pt.close()


def new_paging_hwpt(ctx, ioas, device, flags=0, auto=False, publish=False, fmt=None):
    """Create a paging HWPT on ``ioas`` for ``device``'s IOMMU (in the
    driver's page-table format ``fmt``, a :class:`PagingFormat`; None: its
    default).

    Pending until the ioctl commits unless ``publish`` (auto domains made by a
    VFIO attach, which does not run through the iommufd dispatcher). Errors of
    join_ioas propagate with nothing left behind.
    """
    hwpt = HwptPaging(ctx, ioas, device.iommu, flags, auto, fmt)
    try:
        hwpt.join_ioas()
    except BaseException:
        hwpt.destroy()
        raise
    if publish:
        ctx.add_published(hwpt)
    else:
        ctx.add(hwpt)
    return hwpt


@ioctl(uapi.IOMMU_HWPT_ALLOC, "iommu_hwpt_alloc", "__reserved")
def hwpt_alloc(ctx, caller, cmd):
    """IOMMU_HWPT_ALLOC, checks in the order of reference §9.1.

    EOPNOTSUPP: ``__reserved``/``__reserved2`` non-zero, unknown or
    unsupported flags, driver data on a paging HWPT of an IOMMU that takes
    none, DIRTY_TRACKING on a device without it, PASID on an IOMMU without
    PASID support, nesting (not emulated yet); EINVAL: data_type/data_len
    mismatch, unknown pt_id or one that is neither IOAS nor paging HWPT;
    ENOENT: unknown dev_id, or FAULT_ID_VALID with an unknown fault_id;
    then the driver's data rules (the mock's: EOPNOTSUPP another data_type
    or an unknown pagetable_type, EINVAL data_len below 4, E2BIG a non-zero
    tail, EFAULT unreadable).
    """
    if cmd.__reserved or cmd.__reserved2:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    if (cmd.data_type == uapi.IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0):
        raise UapiError(errno.EINVAL, "data_type/data_len mismatch")
    # By kind: core.iommufd.device builds on this module (its auto domains).
    idev = ctx.get_kind(cmd.dev_id, "DEVICE")
    pt = ctx.find(cmd.pt_id)
    if pt is None:
        raise UapiError(errno.EINVAL, f"pt_id {cmd.pt_id} unknown")
    if isinstance(pt, Ioas):
        flags = cmd.flags
        if flags & ~PAGING_FLAGS:
            raise UapiError(errno.EOPNOTSUPP, f"flags {flags:#x}")
        if flags & uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID and flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT:
            raise UapiError(errno.EOPNOTSUPP, "FAULT_ID_VALID with NEST_PARENT")
        # Driver data goes to a driver with a flags-aware paging allocator
        # (the selftest mock's ``paging_format``); others refuse it.
        paging_format = getattr(idev.device.iommu, "paging_format", None)
        if cmd.data_type != uapi.IOMMU_HWPT_DATA_NONE and paging_format is None:
            raise UapiError(errno.EOPNOTSUPP, "no driver data for paging HWPTs")
        if flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not idev.device.dirty_tracking:
            raise UapiError(errno.EOPNOTSUPP, "device has no dirty tracking")
        if flags & uapi.IOMMU_HWPT_ALLOC_PASID and not idev.device.iommu.pasid_bits:
            raise UapiError(errno.EOPNOTSUPP, "the IOMMU has no PASID support")
        fmt = None
        if cmd.data_type != uapi.IOMMU_HWPT_DATA_NONE:
            fmt = paging_format(caller.mem, cmd.data_type, cmd.data_len, cmd.data_uptr)
        hwpt = new_paging_hwpt(ctx, pt, idev.device, flags, fmt=fmt)
    elif isinstance(pt, HwptPaging):
        if cmd.flags & ~NESTED_FLAGS:
            raise UapiError(errno.EOPNOTSUPP, f"nested flags {cmd.flags:#x}")
        if cmd.data_len == 0:
            raise UapiError(errno.EOPNOTSUPP, "nested HWPT needs driver data")
        # The emulated IOMMU driver has no nested domain support yet.
        raise UapiError(errno.EOPNOTSUPP, "nesting is not emulated yet")
    else:
        raise UapiError(errno.EINVAL, f"pt_id {cmd.pt_id} is a {pt.kind}")
    if cmd.flags & uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID:
        hwpt.fault = ctx.get(cmd.fault_id, FaultQueue).get()
    cmd.out_hwpt_id = hwpt.id


@ioctl(uapi.IOMMU_HWPT_INVALIDATE, "iommu_hwpt_invalidate", "__reserved")
def hwpt_invalidate(ctx, caller, cmd):
    """IOMMU_HWPT_INVALIDATE, the core's rules (§9.4): EOPNOTSUPP
    ``__reserved`` (nothing written back); EINVAL entry_num with a NULL
    data_uptr or entry_len 0; ENOENT unknown hwpt_id; EINVAL anything but a
    nested HWPT or a vIOMMU, which is everything here (nesting is not
    emulated). From the EINVAL on, the struct is written back with
    ``entry_num`` = entries handled (0), as the kernel's ``out:`` path does.
    """
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    cmd.entry_num, entry_num = 0, cmd.entry_num
    if entry_num and (not cmd.data_uptr or not cmd.entry_len):
        raise respond_anyway(errno.EINVAL, "entries without data_uptr or entry_len")
    if ctx.find(cmd.hwpt_id) is None:
        raise respond_anyway(errno.ENOENT, f"no object {cmd.hwpt_id}")
    raise respond_anyway(errno.EINVAL, f"{cmd.hwpt_id} is neither a nested HWPT nor a vIOMMU")


def _paging(ctx, hwpt_id):
    # iommufd_get_hwpt_paging: any other object (or none) is ENOENT.
    return ctx.get(hwpt_id, HwptPaging)


@ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, "iommu_hwpt_set_dirty_tracking", "__reserved",
       respond=None)
def hwpt_set_dirty_tracking(ctx, caller, cmd):
    """IOMMU_HWPT_SET_DIRTY_TRACKING (§9.3): EOPNOTSUPP unknown flags
    (``__reserved`` is not checked, as in the kernel); ENOENT not a paging
    HWPT; EOPNOTSUPP a HWPT allocated without DIRTY_TRACKING. ENABLE clears
    every dirty bit, then tracks; without it, tracking stops."""
    if cmd.flags & ~uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x}")
    hwpt = _paging(ctx, cmd.hwpt_id)
    if not hwpt.dirty_ops:
        raise UapiError(errno.EOPNOTSUPP, f"HWPT {hwpt.id} has no dirty tracking")
    hwpt.set_dirty_tracking(cmd.flags & uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)


@ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, "iommu_hwpt_get_dirty_bitmap", "data", respond=None)
def hwpt_get_dirty_bitmap(ctx, caller, cmd):
    """IOMMU_HWPT_GET_DIRTY_BITMAP, in the kernel's order (§9.3):
    EOPNOTSUPP unknown flags or ``__reserved``; ENOENT not a paging HWPT;
    EOVERFLOW ``iova + length - 1`` wraps; EINVAL iova or end not aligned to
    the IOAS's iova_alignment; EINVAL page_size 0, or iova or end not a
    multiple of it; EOPNOTSUPP a HWPT without dirty tracking. Then the bits:
    one per ``page_size`` bytes (the kernel takes its lowest set bit as the
    shift), OR-ed into the caller's bitmap at ``data`` (any alignment) for
    the pages under dirty leaves, which are cleared unless NO_CLEAR. Only
    the run of areas contiguous from ``iova`` is read. As current kernels
    drop the walk's own errors, an uncovered range, a HWPT not tracking
    and an unreadable or unwritable bitmap all still answer 0. Nothing is
    written back into the struct."""
    if cmd.flags & ~uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x} / __reserved")
    hwpt = _paging(ctx, cmd.hwpt_id)
    iova, length, page_size = cmd.iova, cmd.length, cmd.page_size
    last = iova + ((length - 1) & U64_MAX)
    if last > U64_MAX:
        raise UapiError(errno.EOVERFLOW, "iova + length - 1 wraps")
    end = (last + 1) & U64_MAX
    align = hwpt.ioas.iova_alignment
    if iova & (align - 1) or end & (align - 1):
        raise UapiError(errno.EINVAL, f"range not aligned to {align}")
    if not page_size:
        raise UapiError(errno.EINVAL, "page_size 0")
    if iova & (page_size - 1) or end & (page_size - 1):
        raise UapiError(errno.EINVAL, f"range not aligned to page_size {page_size:#x}")
    if not hwpt.dirty_ops:
        raise UapiError(errno.EOPNOTSUPP, f"HWPT {hwpt.id} has no dirty tracking")
    if not hwpt.dirty_tracking:
        return
    covered = _contiguous_end(hwpt.ioas, iova, last)
    if covered <= iova:
        return
    shift = (page_size & -page_size).bit_length() - 1
    nbits = ((covered - 1 - iova) >> shift) + 1
    nbytes = (nbits + 7) // 8
    try:
        bitmap = bytearray(caller.mem.read(cmd.data, nbytes))
    except UapiError:
        return
    before = bytes(bitmap)
    clear = not cmd.flags & uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
    hwpt.read_dirty(iova, covered - iova, shift, bitmap, clear)
    if bitmap != before:
        try:
            caller.mem.write(cmd.data, bytes(bitmap))
        except UapiError:
            pass


def _contiguous_end(ioas, iova, last):
    """The end (exclusive) of the run of areas that covers IOVA ``iova``
    onwards without a gap, capped at ``last + 1``; ``iova`` if none does
    (iopt_for_each_contig_area)."""
    pos = iova
    while pos <= last:
        area = ioas.area_at(pos)
        if area is None:
            break
        pos = area.last + 1
    return min(pos, last + 1)
