"""VFIO type1 compatibility on /dev/iommu (reference §11.4) and IOMMU_VFIO_IOAS (§7).

A legacy VFIO user talks to the iommufd as to a type1 container: the
commands outside the iommufd table (nr < 0x80, or past its last slot 0xa0,
§2) reach :func:`vfio_compat_ioctl`, which knows VFIO_GET_API_VERSION,
VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, VFIO_IOMMU_GET_INFO,
VFIO_IOMMU_MAP_DMA and VFIO_IOMMU_UNMAP_DMA by their full command number;
anything else is ENOTTY without touching the argument.

The calls that need an address space use the context's *compat IOAS*,
chosen with IOMMU_VFIO_IOAS (an ordinary entry of the iommufd table, below);
without one they fail ENODEV, after their own argument checks.

Type1 (v1) differs from type1v2 only in unmapping: SET_IOMMU(VFIO_TYPE1_IOMMU)
disables large pages on the IOAS (as IOMMU_OPTION HUGE_PAGES=0 would), and an
UNMAP_DMA on an IOAS with large pages disabled first cuts the areas at both
ends of the range, so a part of a mapping can go. With large pages on (type1v2)
a range that covers part of a mapping is ENOENT.

The VFIO structs are read like the kernel's compat code does:
``copy_from_user`` of the fixed part (EFAULT), then ``argsz`` below it ⇒
EINVAL; there is no E2BIG rule here.
"""
import errno
import functools
import operator
import struct

from .. import uapi
from ..errors import UapiError
from ..iommufd import ioas as _ioas
from ..iommufd.ucmd import copy_from_user, ioctl, write_struct
from ..mm.iova import PAGE_SIZE, U64_MAX
from ..uapi import ffi

# The emulator is built without CONFIG_VFIO_NOIOMMU: CHECK_EXTENSION answers
# 0 for VFIO_NOIOMMU_IOMMU and SET_IOMMU refuses it with EINVAL.
CONFIG_VFIO_NOIOMMU = False

_U32_MAX = (1 << 32) - 1
_CAP_HEADER = struct.Struct("<HHI")          # vfio_info_cap_header
_RANGE = struct.Struct("<QQ")                 # vfio_iova_range


def _offsetofend(struct_name, field):
    f = dict(ffi.typeof(f"struct {struct_name}").fields)[field]
    return f.offset + ffi.sizeof(f.type)


def compat_ioas(ctx):
    """The context's compat IOAS (IOMMU_VFIO_IOAS SET); ENODEV if none."""
    ioas = ctx.vfio_ioas
    if ioas is None:
        raise UapiError(errno.ENODEV, "no compat IOAS (IOMMU_VFIO_IOAS SET)")
    return ioas


# -- IOMMU_VFIO_IOAS (§7) --------------------------------------------------------------
def _respond_vfio_ioas(arg, cdata, size):
    # Only GET answers with the struct; SET and CLEAR write nothing back.
    if cdata.op == uapi.IOMMU_VFIO_IOAS_GET:
        write_struct(arg, cdata, ffi.sizeof(cdata[0]), size)


@ioctl(uapi.IOMMU_VFIO_IOAS, "iommu_vfio_ioas", "__reserved", respond=_respond_vfio_ioas)
def vfio_ioas(ctx, caller, cmd):
    """IOMMU_VFIO_IOAS (§7): which IOAS the VFIO compat ioctls use.

    EOPNOTSUPP ``__reserved`` != 0 (checked before ``op``) or unknown op.
    GET: ENODEV with no compat IOAS, else ``ioas_id`` is written back.
    SET: ENOENT if ``ioas_id`` is not an IOAS; nothing is written back.
    CLEAR: always succeeds. Destroying the compat IOAS clears it too
    (core.iommufd.context.Context.remove).
    """
    if cmd.__reserved:
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    if cmd.op == uapi.IOMMU_VFIO_IOAS_GET:
        cmd.ioas_id = compat_ioas(ctx).id
    elif cmd.op == uapi.IOMMU_VFIO_IOAS_SET:
        ctx.vfio_ioas = ctx.get(cmd.ioas_id, _ioas.Ioas)
    elif cmd.op == uapi.IOMMU_VFIO_IOAS_CLEAR:
        ctx.vfio_ioas = None
    else:
        raise UapiError(errno.EOPNOTSUPP, f"op {cmd.op}")


# -- container ioctls (§11.4) ----------------------------------------------------------------
def get_api_version(ctx, caller, arg):
    """VFIO_GET_API_VERSION: VFIO_API_VERSION (0); the argument is not used."""
    return uapi.VFIO_API_VERSION


def _enforces_coherency(domain):
    # The emulated IOMMU always snoops (no-snoop DMA is never honoured), so
    # its paging HWPTs enforce cache coherency; a domain may say otherwise.
    return getattr(domain, "enforce_cache_coherency", True)


def check_extension(ctx, caller, arg):
    """VFIO_CHECK_EXTENSION(value) (§11.4): 1 for VFIO_TYPE1_IOMMU,
    VFIO_TYPE1v2_IOMMU and VFIO_UNMAP_ALL; VFIO_NOIOMMU_IOMMU per
    CONFIG_VFIO_NOIOMMU (0 here); VFIO_DMA_CC_IOMMU: ENODEV with no compat
    IOAS, else 1 if every domain (paging HWPT) of it enforces cache coherency
    (the emulated IOMMU's always do), else 0; anything else (VFIO_UPDATE_VADDR,
    the old nesting type 6, unknown values) 0."""
    ext = arg.integer()
    if ext in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_UNMAP_ALL):
        return 1
    if ext == uapi.VFIO_NOIOMMU_IOMMU:
        return int(CONFIG_VFIO_NOIOMMU)
    if ext == uapi.VFIO_DMA_CC_IOMMU:
        return int(all(_enforces_coherency(d) for d in compat_ioas(ctx).domains))
    return 0


def set_iommu(ctx, caller, arg):
    """VFIO_SET_IOMMU(type) (§11.4): EINVAL for a type other than
    VFIO_TYPE1_IOMMU / VFIO_TYPE1v2_IOMMU (before the compat IOAS is looked
    up); ENODEV with no compat IOAS. Type1 (v1) disables large pages on the
    IOAS like IOMMU_OPTION HUGE_PAGES=0 (EINVAL if a domain already holds
    mappings, EADDRINUSE if an area is not PAGE_SIZE aligned, §7), which is
    what lets UNMAP_DMA split mappings. Type1v2 changes nothing."""
    kind = arg.integer()
    if kind not in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU):
        raise UapiError(errno.EINVAL, f"IOMMU type {kind}")
    ioas = compat_ioas(ctx)
    if kind == uapi.VFIO_TYPE1_IOMMU:
        ioas.set_large_pages(False)
    return 0


def _pgsize_bitmap(domain):
    """The page sizes ``domain`` maps, as a bitmap (bit n: 2**n bytes): its
    IOMMU's page sizes for a paging HWPT, else just its smallest page."""
    iommu = getattr(domain, "iommu", None)
    sizes = iommu.page_sizes if iommu is not None else (domain.page_size,)
    return functools.reduce(operator.or_, sizes, 0)


def iova_pgsizes(ioas):
    """``iova_pgsizes`` of VFIO_IOMMU_GET_INFO: the page sizes every domain
    of ``ioas`` supports (all of u64 with no domain), sub-page sizes folded
    into PAGE_SIZE as VFIO does, then at least iova_alignment (a numeric max,
    as the kernel computes it)."""
    bitmap = U64_MAX
    for d in ioas.domains:
        bitmap &= _pgsize_bitmap(d)
    if bitmap & (PAGE_SIZE - 1):
        bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
    return max(bitmap, ioas.iova_alignment)


def _fill_cap_dma_avail(ioas, arg, off, avail):
    """DMA_AVAIL capability at ``off`` if its 12 bytes fit in ``avail``;
    returns its size. ``avail`` is U32_MAX: iommufd has no mapping count limit."""
    size = ffi.sizeof("struct vfio_iommu_type1_info_dma_avail")
    if avail >= size:
        arg.write(off, _CAP_HEADER.pack(uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0)
                  + struct.pack("<I", _U32_MAX))
    return size


def _fill_cap_iova_range(ioas, arg, off, avail):
    """IOVA_RANGE capability at ``off``: the holes of the reserved ranges
    (what IOMMU_IOAS_IOVA_RANGES lists). Each range entry is written if it
    fits in ``avail``, the 16-byte head only if the whole capability does;
    returns the whole size."""
    ranges = ioas.iova_ranges()
    head = ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")
    size = head + len(ranges) * _RANGE.size
    fit = min(len(ranges), max(0, (avail - head) // _RANGE.size))
    if fit:
        arg.write(off + head, b"".join(_RANGE.pack(s, l) for s, l in ranges[:fit]))
    if avail >= size:
        arg.write(off, _CAP_HEADER.pack(uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0)
                  + struct.pack("<II", len(ranges), 0))
    return size


_GET_INFO_MINSZ = _offsetofend("vfio_iommu_type1_info", "iova_pgsizes")
_INFO_SIZE = ffi.sizeof("struct vfio_iommu_type1_info")


def iommu_get_info(ctx, caller, arg):
    """VFIO_IOMMU_GET_INFO (§11.4).

    EFAULT the first 16 bytes unreadable; EINVAL ``argsz`` < 16; ENODEV no
    compat IOAS. The capability chain is built after the 24-byte info:
    DMA_AVAIL at 24 (12 bytes, padded to 16), then IOVA_RANGE at 40; each
    piece is written only where it fits below ``argsz``, and a capability's
    ``next`` is set once ``argsz`` reaches the next one's offset. Then
    ``min(argsz, 24)`` bytes of the info go back: ``argsz`` = the size the
    whole chain needs, ``flags`` = PGSIZES | CAPS, ``iova_pgsizes``,
    ``cap_offset`` = 24 if the whole chain fit else 0, ``pad`` = 0. A write
    that faults is EFAULT (the info is then not written).
    """
    info = copy_from_user(arg, "vfio_iommu_type1_info", _GET_INFO_MINSZ)
    argsz = info.argsz
    if argsz < _GET_INFO_MINSZ:
        raise UapiError(errno.EINVAL, f"argsz {argsz}")
    ioas = compat_ioas(ctx)
    info.flags = uapi.VFIO_IOMMU_INFO_PGSIZES
    info.iova_pgsizes = iova_pgsizes(ioas)
    info.cap_offset = 0
    total = _INFO_SIZE
    last_cap = None
    for fill in (_fill_cap_dma_avail, _fill_cap_iova_range):
        size = fill(ioas, arg, total, argsz - total if argsz > total else 0)
        size = (size + 7) & ~7
        if last_cap is not None and argsz >= total:
            arg.write(last_cap + 4, struct.pack("<I", total))
        last_cap = total
        total += size
    if argsz >= total:
        info.cap_offset = _INFO_SIZE
    info.argsz = total
    info.flags |= uapi.VFIO_IOMMU_INFO_CAPS
    write_struct(arg, info, _INFO_SIZE, argsz)
    return 0


_MAP_MINSZ = _offsetofend("vfio_iommu_type1_dma_map", "size")
_MAP_FLAGS = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE


def iommu_map_dma(ctx, caller, arg):
    """VFIO_IOMMU_MAP_DMA (§11.4): map ``size`` bytes of the caller's memory
    at ``vaddr`` to the fixed IOVA ``iova`` of the compat IOAS.

    EFAULT the 32-byte struct unreadable; EINVAL ``argsz`` < 32 or flags
    other than READ/WRITE (VADDR is unsupported); ENODEV no compat IOAS;
    then the fixed-IOVA rules of IOMMU_IOAS_MAP (core.iommufd.ioas.Ioas.map_user:
    EOVERFLOW, EINVAL size 0 or misaligned or reserved, EEXIST in use,
    EFAULT pinning). A mapping with neither READ nor WRITE is accepted (the
    device can then neither read nor write it). Nothing is written back.
    """
    m = copy_from_user(arg, "vfio_iommu_type1_dma_map", _MAP_MINSZ)
    if m.argsz < _MAP_MINSZ or m.flags & ~_MAP_FLAGS:
        raise UapiError(errno.EINVAL, f"argsz {m.argsz} / flags {m.flags:#x}")
    prot = 0
    if m.flags & uapi.VFIO_DMA_MAP_FLAG_READ:
        prot |= _ioas.PROT_READ
    if m.flags & uapi.VFIO_DMA_MAP_FLAG_WRITE:
        prot |= _ioas.PROT_WRITE
    ioas = compat_ioas(ctx)
    owner = ctx.owners.hold(caller)
    try:
        ioas.map_user(owner, m.vaddr, m.size, m.iova, prot, True)
    finally:
        ctx.owners.release(owner)
    return 0


_UNMAP_MINSZ = _offsetofend("vfio_iommu_type1_dma_unmap", "size")


def iommu_unmap_dma(ctx, caller, arg):
    """VFIO_IOMMU_UNMAP_DMA (§11.4).

    Argument errors, nothing written back: EFAULT the 24-byte struct
    unreadable; EINVAL ``argsz`` < 24 or a flag other than ALL
    (GET_DIRTY_BITMAP and VADDR are unsupported); ENODEV no compat IOAS;
    EINVAL ALL with a non-zero ``iova`` or ``size``; with large pages
    disabled on the IOAS (type1 v1), EINVAL when an area cannot be cut at
    ``iova + size - 1`` or before ``iova`` (misaligned; a cut already made
    at the end stays).

    Then the unmap itself: ALL unmaps everything, otherwise every area
    inside ``[iova, iova + size)`` goes (EINVAL size 0, EOVERFLOW wrap,
    ENOENT an area only partly inside: type1v2 never splits, EBUSY locked).
    Nothing mapped there is success with 0 bytes (current kernels). The
    24-byte struct is written back with ``size`` = bytes unmapped, also
    when the unmap failed (then with that errno); EFAULT if it cannot be.
    """
    u = copy_from_user(arg, "vfio_iommu_type1_dma_unmap", _UNMAP_MINSZ)
    if u.argsz < _UNMAP_MINSZ or u.flags & ~uapi.VFIO_DMA_UNMAP_FLAG_ALL:
        raise UapiError(errno.EINVAL, f"argsz {u.argsz} / flags {u.flags:#x}")
    ioas = compat_ioas(ctx)
    if u.flags & uapi.VFIO_DMA_UNMAP_FLAG_ALL:
        if u.iova or u.size:
            raise UapiError(errno.EINVAL, "UNMAP_ALL with iova or size")
        unmapped, error = ioas.unmap_counted(0, None)
    else:
        if ioas.disable_large_pages:
            # Cut after the range's last byte, then before its first (no cut
            # before IOVA 0). The kernel computes both in unsigned long.
            ioas.split_at((u.iova + u.size - 1) & U64_MAX)
            if u.iova:
                ioas.split_at(u.iova - 1)
        unmapped, error = ioas.unmap_counted(u.iova, u.size)
    u.size = unmapped
    write_struct(arg, u, _UNMAP_MINSZ, _UNMAP_MINSZ)
    if error is not None:
        raise error
    return 0


_COMPAT = {
    uapi.VFIO_GET_API_VERSION: get_api_version,
    uapi.VFIO_CHECK_EXTENSION: check_extension,
    uapi.VFIO_SET_IOMMU: set_iommu,
    uapi.VFIO_IOMMU_GET_INFO: iommu_get_info,
    uapi.VFIO_IOMMU_MAP_DMA: iommu_map_dma,
    uapi.VFIO_IOMMU_UNMAP_DMA: iommu_unmap_dma,
}


def vfio_compat_ioctl(ctx, caller, cmd, arg):
    """ioctl on /dev/iommu outside the iommufd table (§2 routing): the VFIO
    type1 container ioctls above, by full command number; any other command
    (VFIO_IOMMU_DIRTY_PAGES, device ioctls, other encodings) is ENOTTY
    without touching the argument. Returns the ioctl result or raises
    UapiError."""
    handler = _COMPAT.get(cmd)
    if handler is None:
        raise UapiError(errno.ENOTTY, f"no compat ioctl {cmd:#x}")
    return handler(ctx, caller, arg)
