"""IOMMU_TEST_CMD: the kernel's iommufd selftest interface (reference §12, §13).

A kernel built with CONFIG_IOMMUFD_TEST has one more ioctl, IOMMU_TEST_CMD
(0x3ba0), through which its selftests create mock devices, check what the
mock IOMMU's page tables hold, count page pins and play an in-kernel access
driver. The emulator answers it like such a kernel, so programs written
against that interface run here with the kernel's results and errnos.

- **Mock devices** (:class:`MockDevice`): a device behind the mock IOMMU
  (:data:`MOCK_IOMMU`: 2 KiB pages with 1 MiB huge leaves, aperture
  ``[MOCK_APERTURE_START, MOCK_APERTURE_LAST]``, 20-bit PASIDs, no reserved
  window), with a RID of its own that no topology device uses, registered in
  the emulator's RID table for as long as it lives (core.iommu.routing finds it
  like any device). MOCK_DOMAIN binds one (a normal DEVICE object) and
  attaches it; the SELFTEST object it returns (:class:`SelftestDevice`,
  "stdev") owns it: IOMMU_DESTROY of the stdev detaches, unbinds and deletes
  the device.
- **Accesses**: CREATE_ACCESS makes an ACCESS object (core.iommufd.access) on an
  IOAS and returns an fd for it (:class:`AccessFile`, the kernel's
  ``selftest_access``): later ops name the access by that fd number in
  ``id``, the transport resolves it (``caller.fds``), and closing the fd
  destroys the access. The file keeps the pins ACCESS_PAGES made, by item id.
- **Pin counts**: MD_CHECK_REFS compares core.mm.pins' model of FOLL_PIN counts.

Only the ops a program needs without nesting or a vIOMMU are implemented
(and DEV_CHECK_CACHE, which reads the mock device's cache that only vIOMMU
invalidations would change); the others (and unknown ops) answer EOPNOTSUPP.
Each op checks in the kernel's order; the struct is written back only by
the ops that respond in the kernel (:data:`RESPOND_OPS`).
"""
import errno
import itertools
import struct
from dataclasses import dataclass

from cext.pagetable import IOPageFault

from .. import uapi
from ..devices import LiveDevice
from ..errors import UapiError
from ..fds import ReturnedFd
from ..files import NULL, SYNC_CLOSE, WHOAMI
from ..iommu import routing
from ..iommu.routing import RID
from ..mm import filemem
from ..mm.filemem import file_views, view_of
from ..mm.iova import PAGE_SIZE, U64_MAX
from ..mm.pins import first_refs_mismatch
from ..mm.usermem import MemArg
from ..topology import Device, IommuModel
from . import access as _access
from . import device as _device
from . import fault as _fault
from . import hwpt as _hwpt
from . import ioas as _ioas
from .context import Obj
from .ucmd import ioctl, read_struct, write_struct

# ACCESS_PAGES and ACCESS_RW refuse more than this (the kernel's guard
# against huge allocations): ENOMEM.
ACCESS_MAX = 16 << 20
# The memory-limit knob's floor: one batch element (an unsigned long + u32).
MEMORY_LIMIT_MIN = 12
# DMABUF_GET's largest dma-buf, in pages (§12).
DMABUF_MAX_PAGES = 512
# Mock devices take RIDs from here up, skipping RIDs the topology uses.
MOCK_RID_FIRST = 0xFE00

MOCK_DEV_FLAGS = uapi.MOCK_FLAGS_DEVICE_NO_DIRTY | uapi.MOCK_FLAGS_DEVICE_PASID
ACCESS_PAGES_FLAGS = uapi.MOCK_FLAGS_ACCESS_WRITE | uapi.MOCK_FLAGS_ACCESS_SYZ
ACCESS_RW_FLAGS = (uapi.MOCK_ACCESS_RW_WRITE | uapi.MOCK_ACCESS_RW_SLOW_PATH
                   | uapi.MOCK_FLAGS_ACCESS_SYZ)

_reserved_keys = itertools.count(1)


@dataclass(frozen=True)
class MockIommuModel(IommuModel):
    """The selftest's mock IOMMU (§12 constants): 2 KiB pages and 1 MiB
    leaves, a 31-bit IOVA space of which the aperture
    ``[MOCK_APERTURE_START, MOCK_APERTURE_LAST]`` translates, 20-bit PASIDs,
    no reserved region."""

    address_width: int = 31
    page_sizes: tuple = (uapi.MOCK_PAGE_SIZE, uapi.MOCK_HUGE_PAGE_SIZE)
    reserved: tuple = ()
    pasid_bits: int = uapi.MOCK_PASID_WIDTH

    @property
    def aperture(self):
        return (uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST)

    def key(self):
        return ("mock",) + super().key()

    def paging_format(self, mem, data_type, data_len, data_uptr):
        """The mock driver's paging HWPT_ALLOC with driver data: ``struct
        iommu_hwpt_selftest`` read from ``data_uptr`` in ``mem`` as
        iommu_copy_struct_from_user does. EOPNOTSUPP a data_type other than
        IOMMU_HWPT_DATA_SELFTEST; EINVAL data_len shorter than ``iotlb``;
        E2BIG non-zero bytes past the struct; EFAULT unreadable; EOPNOTSUPP
        an unknown ``pagetable_type``. Returns the PagingFormat."""
        if data_type != uapi.IOMMU_HWPT_DATA_SELFTEST:
            raise UapiError(errno.EOPNOTSUPP, f"data_type {data_type:#x}")
        if data_len < _SELFTEST_DATA_MIN:
            raise UapiError(errno.EINVAL, f"data_len {data_len}")
        cfg = read_struct(MemArg(mem, data_uptr), _SELFTEST_DATA, _SELFTEST_DATA_SIZE, data_len)
        fmt = MOCK_FORMATS.get(cfg.pagetable_type)
        if fmt is None:
            raise UapiError(errno.EOPNOTSUPP, f"pagetable_type {cfg.pagetable_type}")
        return fmt


MOCK_IOMMU = MockIommuModel()

_SELFTEST_DATA = uapi.ffi.typeof("struct iommu_hwpt_selftest *")
_SELFTEST_DATA_SIZE = uapi.sizeof("iommu_hwpt_selftest")
# offsetofend(struct iommu_hwpt_selftest, iotlb): its last mandatory field.
_SELFTEST_DATA_MIN = 4

# The mock's page-table formats (7.3's iommupt AMDv1 mock): DEFAULT keeps the
# mock aperture and 2 KiB pages; HUGE keeps the format's own 56-bit aperture
# and only takes 1 MiB leaves, but offers PAGE_SIZE too so that iommufd
# accepts the domain, which makes its IOVA alignment PAGE_SIZE.
MOCK_FORMATS = {
    uapi.MOCK_IOMMUPT_DEFAULT: _hwpt.PagingFormat(
        "default", uapi.MOCK_PAGE_SIZE, MockIommuModel().aperture, MockIommuModel.address_width),
    uapi.MOCK_IOMMUPT_HUGE: _hwpt.PagingFormat(
        "huge", PAGE_SIZE, (0, (1 << 56) - 1), 56),
}


@dataclass(frozen=True)
class MockDevice(Device):
    """A device of the mock IOMMU. ``dev_flags``: MOCK_FLAGS_DEVICE_*
    (NO_DIRTY: no dirty tracking; PASID: 20-bit PASIDs)."""

    dev_flags: int = 0

    def hw_info(self):
        """GET_HW_INFO of the mock driver (§9.2): type 0xfeedbeef, data
        ``struct iommu_test_hw_info {u32 flags = 0; u32 test_reg =
        0xdeadbeef}``; not a PCI device."""
        return (uapi.IOMMU_HW_INFO_TYPE_SELFTEST,
                struct.pack("<II", 0, uapi.IOMMU_HW_INFO_SELFTEST_REGVAL), False)


class MockLive(LiveDevice):
    """A mock device at run time; ``pasid_1024_fake_error``: the rigged
    failure of PASID 1024 (see :meth:`set_dev_pasid`); ``cache``: the mock
    device's cache, MOCK_DEV_CACHE_NUM u32 entries that start at
    IOMMU_TEST_DEV_CACHE_DEFAULT (§12), read by DEV_CHECK_CACHE."""

    def __init__(self, config):
        super().__init__(config)
        self.pasid_1024_fake_error = False
        self.cache = [uapi.IOMMU_TEST_DEV_CACHE_DEFAULT] * uapi.MOCK_DEV_CACHE_NUM

    def set_dev_pasid(self, pasid, hwpt):
        """The mock driver's PASID step. PASID 1024
        (IOMMU_TEST_PASID_RESERVED) is rigged so the core's failure path of
        a replace can be tested: a detach clears the flag; with the flag set
        the change fails ENOMEM and clears it; otherwise it succeeds and
        sets it. So attach, then replace fails once, then succeeds."""
        if pasid != uapi.IOMMU_TEST_PASID_RESERVED:
            return
        if hwpt is None:
            self.pasid_1024_fake_error = False
        elif self.pasid_1024_fake_error:
            self.pasid_1024_fake_error = False
            raise UapiError(errno.ENOMEM, "PASID 1024: the mock's rigged failure")
        else:
            self.pasid_1024_fake_error = True


def _new_mock(emulator, dev_flags):
    """A mock device with the lowest free RID from MOCK_RID_FIRST up (then
    downward below it), registered in the emulator's RID table. ENOMEM when
    no RID is free."""
    by_rid = emulator.by_rid
    rid = next((r for r in itertools.chain(range(MOCK_RID_FIRST, 0x10000),
                                           range(MOCK_RID_FIRST - 1, 0, -1))
                if r not in by_rid), None)
    if rid is None:
        raise UapiError(errno.ENOMEM, "no free RID for a mock device")
    dev = MockDevice(
        name=f"mock-{rid:04x}", vfio="", rid=rid,
        pasid_bits=uapi.MOCK_PASID_WIDTH if dev_flags & uapi.MOCK_FLAGS_DEVICE_PASID else 0,
        dirty_tracking=not dev_flags & uapi.MOCK_FLAGS_DEVICE_NO_DIRTY,
        iommu=MOCK_IOMMU, group=0x10000 + rid, group_members=(f"mock-{rid:04x}",),
        dev_flags=dev_flags)
    live = MockLive(dev)
    by_rid[rid] = [live]
    return live


class SelftestDevice(Obj):
    """The SELFTEST object of MOCK_DOMAIN ("stdev"): it owns a mock device
    (``mock``) and its DEVICE object (``idev``, one reference held).
    Destroying it detaches and unbinds the device and deletes it (§12)."""

    kind = "SELFTEST"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.mock = None
        self.idev = None

    def destroy(self):
        idev, self.idev = self.idev, None
        if idev is not None:
            idev.put()
            if self.ctx.find(idev.id) is idev:
                self.ctx.remove(idev)       # detaches the RID and every PASID
            else:
                idev.destroy()
        mock, self.mock = self.mock, None
        if mock is not None:
            by_rid = self.ctx.emulator.by_rid
            if any(d is mock for d in by_rid.get(mock.rid, ())):
                del by_rid[mock.rid]


class AccessFile(ReturnedFd):
    """The fd of CREATE_ACCESS (the kernel's ``selftest_access``): its
    ``access`` (core.iommufd.access.Access) and the pins ACCESS_PAGES made
    (``items``: item id -> Pin; ids count up from 0 per fd). Closing the fd
    unpins everything and destroys the access. Lifetime and node:
    core.fds.ReturnedFd; a closed access fd used as ``id`` is EBADFD."""

    node_kind = "access"
    closed_errno = errno.EBADFD
    # WHOAMI: an access fd is passed back in as IOMMU_TEST_CMD's ``id``.
    transport_ioctls = frozenset((NULL, SYNC_CLOSE, WHOAMI))

    def __init__(self, access, uid):
        super().__init__(access.ctx, uid)
        self.access = access
        self.items = {}
        self.next_id = 0
        access.unmap = self.unmap

    def unmap(self, iova, length):
        """The access's unmap callback (iommufd_test_access_unmap): drop
        every item that meets IOVA ``[iova, iova+length)``."""
        last = iova + length - 1
        for item_id, pin in list(self.items.items()):
            if iova <= pin.iova + pin.length - 1 and last >= pin.iova:
                del self.items[item_id]
                self.access.unpin(pin)

    def _close(self):
        self.unmap(0, U64_MAX)
        ctx, access = self.ctx, self.access
        if ctx.find(access.id) is access:
            ctx.remove(access)
        else:
            access.destroy()


class DmabufFile(ReturnedFd):
    """The dma-buf fd of DMABUF_GET (the kernel selftest's mock exporter):
    ``dmabuf`` (core.mm.filemem.DmaBuf) is its memory, which
    IOMMU_IOAS_MAP_FILE maps and DMABUF_REVOKE revokes. Lifetime and node:
    core.fds.ReturnedFd; areas that mapped it keep its pages."""

    node_kind = "dmabuf"
    # WHOAMI: a dma-buf fd is passed back in (MAP_FILE's fd, DMABUF_REVOKE).
    transport_ioctls = frozenset((NULL, SYNC_CLOSE, WHOAMI))

    def __init__(self, ctx, uid, size):
        super().__init__(ctx, uid)
        self.dmabuf = filemem.DmaBuf(size)

    def _close(self):
        pass


def _access_file(caller, fd):
    """The AccessFile behind the caller's fd ``fd`` (resolved by the
    transport into ``caller.fds``). The kernel answers EBADFD both for an
    fd that is not open and for one that is not an access fd."""
    try:
        got = caller.fd(fd, AccessFile)
    except UapiError:
        got = None
    if not isinstance(got, AccessFile):
        raise UapiError(errno.EBADFD, f"fd {fd} is not an access fd")
    got.check_caller(caller)
    return got


def _syz_iova(access, iova):
    """MOCK_FLAGS_ACCESS_SYZ: ``iova`` holds {u32 nth_area, u32 offset};
    the IOVA is the nth area's start plus the offset (0 if none)."""
    nth, offset = iova & 0xFFFFFFFF, iova >> 32
    if access.ioas is None:
        return 0
    for area in access.ioas.areas.values():
        if nth == 0:
            return area.iova + offset
        nth -= 1
    return 0


def _pasid_key(pasid):
    # IOMMU_NO_PASID (0) names the RID attachment.
    return RID if pasid == 0 else pasid


def _stdev(ctx, oid):
    return ctx.get(oid, SelftestDevice)


# -- the ops ---------------------------------------------------------------------------------
def _add_reserved(ctx, caller, cmd):
    """ADD_RESERVED: ENOENT ``id`` not an IOAS; EINVAL length 0 or a range
    that wraps; EADDRINUSE it meets an area or an allowed range."""
    ioas = ctx.get(cmd.id, _ioas.Ioas)
    start, length = cmd.add_reserved.start, cmd.add_reserved.length
    last = start + length - 1
    if length == 0 or last > U64_MAX:
        raise UapiError(errno.EINVAL, f"reserved range {start:#x}+{length:#x}")
    ioas.add_reserved(("test", next(_reserved_keys)), [(start, last)])


def _mock_domain(ctx, caller, cmd):
    """MOCK_DOMAIN / MOCK_DOMAIN_FLAGS: the stdev's ID is taken first, then
    EINVAL unknown dev_flags; the DEVICE object is published at once (as a
    bind does); then the attach to ``id`` (IOAS: an auto domain; or a
    paging HWPT) with the errors of BoundDevice.attach. Out: stdev, HWPT
    and DEVICE ids. On any failure (a fault writing them back included) the
    device is detached, unbound and deleted."""
    dev_flags = 0
    if cmd.op == uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS:
        dev_flags = cmd.mock_domain_flags.dev_flags
    sobj = SelftestDevice(ctx)
    ctx.add(sobj)
    if dev_flags & ~MOCK_DEV_FLAGS:
        raise UapiError(errno.EINVAL, f"mock dev_flags {dev_flags:#x}")
    sobj.mock = mock = _new_mock(ctx.emulator, dev_flags)
    idev = _device.BoundDevice(ctx, mock)
    ctx.add_published(idev)
    mock.bound = idev
    sobj.idev = idev.get()
    hwpt_id = idev.attach(cmd.id, RID, mode="attach")
    out = cmd.mock_domain
    out.out_stdev_id, out.out_hwpt_id, out.out_idev_id = sobj.id, hwpt_id, idev.id


def _mock_domain_replace(ctx, caller, cmd):
    """MOCK_DOMAIN_REPLACE: ENOENT ``id`` not a stdev; then the errors of a
    core replace of the RID (EINVAL nothing attached, ...). Out: pt_id = the
    HWPT now attached. The replace stands even if writing it back faults."""
    sobj = _stdev(ctx, cmd.id)
    r = cmd.mock_domain_replace
    r.pt_id = sobj.idev.attach(r.pt_id, RID, mode="replace")


def _md_check_map(ctx, caller, cmd):
    """MD_CHECK_MAP: ENOENT ``id`` not a paging HWPT; EINVAL not a mock
    domain; EINVAL iova, length or uptr not multiples of the domain's page
    size, or uptr+length wraps; then page by page: EFAULT uptr's page not
    readable, EINVAL the IOVA does not translate to that very byte of the
    caller's memory."""
    hwpt = ctx.get(cmd.id, _hwpt.HwptPaging)
    if not isinstance(hwpt.iommu, MockIommuModel):
        raise UapiError(errno.EINVAL, f"HWPT {hwpt.id} is not a mock domain")
    c = cmd.check_map
    ps = hwpt.page_size
    if c.iova % ps or c.length % ps or c.uptr % ps or c.uptr + c.length > U64_MAX:
        raise UapiError(errno.EINVAL, "check_map not aligned to the mock page size")
    if not c.length:
        return
    bad = _first_map_mismatch(hwpt, c.iova, c.length, c.uptr, caller.tgid)
    upto = c.length if bad is None else bad - bad % ps + ps
    caller.mem.probe(c.uptr, upto)
    if bad is not None:
        raise UapiError(errno.EINVAL, f"IOVA {c.iova + bad:#x} does not map to {c.uptr + bad:#x}")


def _first_map_mismatch(hwpt, iova, length, uptr, tgid):
    """The byte offset of the first IOVA of ``[iova, iova+length)`` that
    does not translate to ``uptr`` + offset in process ``tgid``, or None.
    MAP_FILE memory matches where the process maps the same file page."""
    limit = length
    try:
        segs = hwpt.pt.translate_range(iova, length, 0)
    except IOPageFault as e:
        limit = max(0, min(e.iova - iova, length))
        segs = hwpt.pt.translate_range(iova, limit, 0) if limit else []
    except OSError:
        limit, segs = 0, []
    bad = limit if limit < length else None
    views = None
    pos = 0
    for addr, n in segs:
        va = hwpt.untag(addr)[1]
        while n:
            area = hwpt.ioas.area_at(iova + pos)
            take = n if area is None else min(n, area.last + 1 - (iova + pos))
            fm = area.pages.file if area is not None else None
            if fm is not None:
                if views is None:
                    views = file_views(tgid, uptr, uptr + length)
                step = hwpt.page_size
                for k in range(0, take, step):
                    if view_of(views, uptr + pos + k) != (fm.dev, fm.ino, fm.offset(va + k)):
                        return pos + k if bad is None else min(bad, pos + k)
            elif va != uptr + pos or area is None or area.owner.tgid != tgid:
                return pos if bad is None else min(bad, pos)
            pos += take
            va += take
            n -= take
    return bad


def _md_check_refs(ctx, caller, cmd):
    """MD_CHECK_REFS: EINVAL length or uptr not page-aligned, or
    uptr+length wraps; then page by page: EFAULT not readable, EIO its pin
    count (core.mm.pins) is not ``refs``."""
    c = cmd.check_refs
    if c.length % PAGE_SIZE or c.uptr % PAGE_SIZE or c.uptr + c.length > U64_MAX:
        raise UapiError(errno.EINVAL, "check_refs not page-aligned")
    if not c.length:
        return
    bad = first_refs_mismatch(ctx.emulator, caller.tgid, c.uptr, c.length, c.refs)
    caller.mem.probe(c.uptr, c.length if bad is None else bad - c.uptr + PAGE_SIZE)
    if bad is not None:
        raise UapiError(errno.EIO, f"page {bad:#x} is not pinned {c.refs} times")


def _create_access(ctx, caller, cmd):
    """CREATE_ACCESS: EOPNOTSUPP unknown flags; the ACCESS object takes an
    ID (published at once, not destroyable); ENOENT ``id`` not an IOAS;
    EADDRINUSE an area not aligned for a pinning access. The fd cannot be
    made in the caller: ``out_access_fd`` is -1 and the AccessFile goes to
    ``caller.returned`` for the transport to publish (README, "Ioctls that
    return file descriptors")."""
    flags = cmd.create_access.flags
    if flags & ~uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise UapiError(errno.EOPNOTSUPP, f"create_access flags {flags:#x}")
    access = _access.Access(ctx, bool(flags & uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    ctx.add_published(access)
    afile = AccessFile(access, caller.uid)
    access.change_ioas(ctx.get(cmd.id, _ioas.Ioas))
    caller.returned.append(afile)
    cmd.create_access.out_access_fd = 0xFFFFFFFF


def _destroy_access_pages(ctx, caller, cmd):
    """DESTROY_ACCESS_PAGES: EBADFD ``id`` not an access fd; ENOENT no item
    ``access_pages_id``. Unpins the item."""
    afile = _access_file(caller, cmd.id)
    pin = afile.items.pop(cmd.destroy_access_pages.access_pages_id, None)
    if pin is None:
        raise UapiError(errno.ENOENT, f"no access item {cmd.destroy_access_pages.access_pages_id}")
    afile.access.unpin(pin)


def _access_pages(ctx, caller, cmd):
    """ACCESS_PAGES: ENOMEM length > 16 MiB; EOPNOTSUPP unknown flags;
    EBADFD ``id`` not an access fd; EOPNOTSUPP the access does not pin;
    then Access.pin_pages (EINVAL, EOVERFLOW, EPERM, EFAULT, ENOENT); then,
    unless uptr is 0, page by page: EFAULT uptr's page not readable, EBADE
    the pinned page is not that page of the caller's memory. Out:
    ``out_access_pages_id`` (ids count up from 0 per access fd)."""
    c = cmd.access_pages
    if c.length > ACCESS_MAX:
        raise UapiError(errno.ENOMEM, f"access_pages length {c.length:#x}")
    if c.flags & ~ACCESS_PAGES_FLAGS:
        raise UapiError(errno.EOPNOTSUPP, f"access_pages flags {c.flags:#x}")
    afile = _access_file(caller, cmd.id)
    access = afile.access
    if not access.needs_pin:
        raise UapiError(errno.EOPNOTSUPP, "the access does not pin pages")
    iova = _syz_iova(access, c.iova) if c.flags & uapi.MOCK_FLAGS_ACCESS_SYZ else c.iova
    pin = access.pin_pages(iova, c.length, bool(c.flags & uapi.MOCK_FLAGS_ACCESS_WRITE))
    try:
        if c.uptr:
            _check_pages(caller, pin, iova, c.uptr)
    except BaseException:
        access.unpin(pin)
        raise
    item_id = afile.next_id
    afile.next_id = (afile.next_id + 1) & 0xFFFFFFFF
    afile.items[item_id] = pin

    def undo():
        if afile.items.get(item_id) is pin:
            del afile.items[item_id]
            access.unpin(pin)

    ctx.on_rollback(undo)
    c.out_access_pages_id = item_id


def _check_pages(caller, pin, iova, uptr):
    """iommufd_test_check_pages: the k-th page pinned must be the page of
    the caller's memory at ``uptr - iova % PAGE_SIZE + k * PAGE_SIZE``
    (EFAULT that page not readable, EBADE another page)."""
    tgid = caller.tgid
    user0 = uptr - iova % PAGE_SIZE
    k = 0
    bad = None
    views = None
    for area, va, n in pin.pieces:
        fm = area.pages.file
        same = area.owner.tgid == tgid
        for page in range(va - va % PAGE_SIZE, va + n, PAGE_SIZE):
            user = user0 + k * PAGE_SIZE
            if fm is not None:
                # MAP_FILE memory: the same page of the same file.
                if views is None:
                    total = sum(length for _, _, length in pin.pieces)
                    views = file_views(tgid, user0 - user0 % PAGE_SIZE, user0 + total + PAGE_SIZE)
                seen = view_of(views, user - user % PAGE_SIZE)
                ok = seen == (fm.dev, fm.ino, fm.offset(page))
            else:
                ok = same and user // PAGE_SIZE == page // PAGE_SIZE
            if not ok:
                bad = k
                break
            k += 1
        if bad is not None:
            break
    npages = k if bad is None else bad + 1
    start = user0 - user0 % PAGE_SIZE
    caller.mem.probe(start, npages * PAGE_SIZE)
    if bad is not None:
        raise UapiError(errno.EBADE, f"pinned page {bad} is not the caller's page")


def _access_rw(ctx, caller, cmd):
    """ACCESS_RW: ENOMEM length > 16 MiB; EOPNOTSUPP unknown flags; EBADFD
    ``id`` not an access fd; for a write, EFAULT uptr not readable; then
    Access.rw (EINVAL length 0, EOVERFLOW, EPERM, EFAULT, ENOENT); for a
    read, EFAULT uptr not writable. SLOW_PATH changes nothing visible."""
    c = cmd.access_rw
    if c.length > ACCESS_MAX:
        raise UapiError(errno.ENOMEM, f"access_rw length {c.length:#x}")
    if c.flags & ~ACCESS_RW_FLAGS:
        raise UapiError(errno.EOPNOTSUPP, f"access_rw flags {c.flags:#x}")
    access = _access_file(caller, cmd.id).access
    write = bool(c.flags & uapi.MOCK_ACCESS_RW_WRITE)
    data = caller.mem.read(c.uptr, c.length) if write else bytearray(c.length)
    iova = _syz_iova(access, c.iova) if c.flags & uapi.MOCK_FLAGS_ACCESS_SYZ else c.iova
    out = access.rw(iova, data, write)
    if not write:
        caller.mem.write(c.uptr, out)


def _set_temp_memory_limit(ctx, caller, cmd):
    """SET_TEMP_MEMORY_LIMIT: EINVAL below 12 bytes. A knob of the kernel's
    pinning batches; kept, and without visible effect here."""
    limit = cmd.memory_limit.limit
    if limit < MEMORY_LIMIT_MIN:
        raise UapiError(errno.EINVAL, f"memory limit {limit}")
    ctx.emulator.test_memory_limit = limit


def _access_replace_ioas(ctx, caller, cmd):
    """ACCESS_REPLACE_IOAS: EBADFD ``id`` not an access fd; ENOENT the access
    has no IOAS, or ``ioas_id`` is not an IOAS of the access's context;
    EADDRINUSE an area of the new IOAS not aligned for a pinning access.
    The access's pins in the old IOAS are released (its unmap callback)."""
    access = _access_file(caller, cmd.id).access
    if access.ioas is None:
        raise UapiError(errno.ENOENT, "the access has no IOAS")
    access.change_ioas(access.ctx.get(cmd.access_replace_ioas.ioas_id, _ioas.Ioas))


def _dev_check_cache(ctx, caller, cmd):
    """DEV_CHECK_CACHE (§12; order of the kernel's selftest.c): ENOENT
    ``id`` not a DEVICE; then EINVAL when ``check_dev_cache.id`` is past
    MOCK_DEV_CACHE_ID_MAX or that cache entry is not ``cache``. A device
    that is not a mock device has no such cache: EINVAL (the kernel would
    read a mock_dev that is not there; no test of its own passes one)."""
    idev = ctx.get(cmd.id, _device.BoundDevice)
    c = cmd.check_dev_cache
    dev = idev.device
    if (not isinstance(dev, MockLive) or c.id > uapi.MOCK_DEV_CACHE_ID_MAX
            or dev.cache[c.id] != c.cache):
        raise UapiError(errno.EINVAL, f"device cache {c.id} is not {c.cache:#x}")


def _dirty(ctx, caller, cmd):
    """DIRTY (§12; order of the kernel's selftest.c): EINVAL page_size or
    length 0, iova or length not a multiple of page_size, or uptr NULL;
    ENOENT ``id`` not a paging HWPT; EINVAL not a mock domain, or one not
    tracking dirty pages; EFAULT the bitmap at ``uptr`` unreadable. Then
    for each set bit k, the IOPTE mapping ``iova + k * page_size`` (if any)
    is marked dirty as the hardware would; ``out_nr_dirty`` counts the set
    bits. An IOPTE is what the mock's page table would hold there: a 1 MiB
    leaf; else, as iommufd maps in host pages, the whole host page when one
    area maps all of it from one host page (a 4 KiB IOPTE of the iommupt
    mock), or the 2 KiB page alone."""
    d = cmd.dirty
    iova, length, page_size = d.iova, d.length, d.page_size
    if not page_size or not length or iova % page_size or length % page_size or not d.uptr:
        raise UapiError(errno.EINVAL, "dirty: page_size, length, iova or uptr")
    hwpt = ctx.get(cmd.id, _hwpt.HwptPaging)
    if not isinstance(hwpt.iommu, MockIommuModel):
        raise UapiError(errno.EINVAL, f"HWPT {hwpt.id} is not a mock domain")
    if not hwpt.dirty_tracking:
        raise UapiError(errno.EINVAL, f"HWPT {hwpt.id} is not tracking dirty pages")
    nbits = length // page_size
    bits = int.from_bytes(caller.mem.read(d.uptr, (nbits + 7) // 8), "little")
    bits &= (1 << nbits) - 1
    count = 0
    ioas, pt, small = hwpt.ioas, hwpt.pt, uapi.MOCK_PAGE_SIZE
    while bits:
        low = bits & -bits
        k = low.bit_length() - 1
        bits ^= low
        count += 1
        cur = iova + k * page_size
        start, size = cur - cur % small, small
        page = cur - cur % PAGE_SIZE
        area = ioas.area_at(page)
        if (area is not None and area.last >= page + PAGE_SIZE - 1
                and (area.user_va + page - area.iova) % PAGE_SIZE == 0):
            start, size = page, PAGE_SIZE
        try:
            pt.mark_dirty(start, size)
        except OSError:
            pass                        # beyond the table: nothing mapped there
    d.out_nr_dirty = count


def _dmabuf_get(ctx, caller, cmd):
    """DMABUF_GET: a mock dma-buf of ``length`` bytes rounded up to pages:
    EINVAL for 0 or more than 512 pages (§12). The kernel returns the fd as
    the ioctl's result; here the DmabufFile goes to ``caller.returned`` and
    the shim opens its node and returns that fd (README, "Ioctls that
    return file descriptors")."""
    npages = -(-cmd.dmabuf_get.length // PAGE_SIZE)
    if not 1 <= npages <= DMABUF_MAX_PAGES:
        raise UapiError(errno.EINVAL, f"dma-buf of {cmd.dmabuf_get.length} bytes")
    caller.returned.append(DmabufFile(ctx, caller.uid, npages * PAGE_SIZE))


def _dmabuf_revoke(ctx, caller, cmd):
    """DMABUF_REVOKE: EBADF ``dmabuf_fd`` not an open fd; EINVAL not a
    dma-buf of this mount (dma_buf_get's answer for another file); then
    revoked is set or cleared: a later MAP_FILE of it is ENODEV while set."""
    fd = cmd.dmabuf_revoke.dmabuf_fd
    if fd < 0:
        raise UapiError(errno.EBADF, f"fd {fd}")
    try:
        f = caller.fd(fd, DmabufFile)
    except UapiError as e:
        raise UapiError(errno.EBADF if e.errno == errno.EBADF else errno.EINVAL, str(e)) from None
    if not isinstance(f, DmabufFile):
        raise UapiError(errno.EINVAL, f"fd {fd} is not a dma-buf")
    f.dmabuf.revoked = bool(cmd.dmabuf_revoke.revoked)


def _trigger_iopf(ctx, caller, cmd):
    """TRIGGER_IOPF: ENOENT ``dev_id`` not a DEVICE. Reports a one-page
    fault group (LAST_PAGE; PASID_VALID when pasid != 0) for the device's
    route {RID, pasid}, as the IOMMU would a page request: it reaches the
    fault queue of the HWPT attached there; with no such route or queue it
    is dropped (the IOMMU answers it itself), which is still success."""
    t = cmd.trigger_iopf
    idev = ctx.get(t.dev_id, _device.BoundDevice)
    dev = idev.device
    key = _pasid_key(t.pasid)
    route = routing.find(ctx.emulator, dev.rid, routing.wire_pasid(dev, key))
    if route is None or route.idev is None:
        return
    queue = getattr(route.target, "fault", None)
    if queue is None:
        return
    group_key = RID if route.device.is_mdev else key
    queue.report(_fault.FaultGroup(route.idev, group_key, t.pasid or None, t.grpid, t.perm,
                            [t.addr], route.target))


def _pasid_attach(ctx, caller, cmd):
    """PASID_ATTACH: ENOENT ``id`` not a stdev; then a core attach of the
    PASID (pasid 0: the RID) with the errors of BoundDevice.attach (EBUSY
    attached already, EINVAL not PASID-compatible or beyond the device's
    PASID width, ...). Out: pt_id = the HWPT attached; undone if writing it
    back faults."""
    sobj = _stdev(ctx, cmd.id)
    a = cmd.pasid_attach
    key = _pasid_key(a.pasid)
    a.pt_id = sobj.idev.attach(a.pt_id, key, mode="attach")
    idev = sobj.idev
    ctx.on_rollback(lambda: idev.detach(key))


def _pasid_replace(ctx, caller, cmd):
    """PASID_REPLACE: ENOENT ``id`` not a stdev; then a core replace (EINVAL
    nothing attached; the mock's PASID 1024 fails ENOMEM every other time).
    Out: pt_id; the replace stands even if writing it back faults."""
    sobj = _stdev(ctx, cmd.id)
    r = cmd.pasid_replace
    r.pt_id = sobj.idev.attach(r.pt_id, _pasid_key(r.pasid), mode="replace")


def _pasid_detach(ctx, caller, cmd):
    """PASID_DETACH: ENOENT ``id`` not a stdev; otherwise always 0."""
    _stdev(ctx, cmd.id).idev.detach(_pasid_key(cmd.pasid_detach.pasid))


def _pasid_check_hwpt(ctx, caller, cmd):
    """PASID_CHECK_HWPT: ENOENT ``id`` not a stdev; with ``hwpt_id`` != 0:
    ENOENT unknown, EINVAL not a HWPT; then EINVAL unless that HWPT (0:
    nothing) is what the PASID (0: the RID) is attached to."""
    sobj = _stdev(ctx, cmd.id)
    c = cmd.pasid_check
    attached = sobj.idev.attachments.get(_pasid_key(c.pasid))
    expect = None
    if c.hwpt_id:
        expect = ctx.get(c.hwpt_id)
        if not isinstance(expect, _hwpt.HwptPaging):
            raise UapiError(errno.EINVAL, f"{c.hwpt_id} is a {expect.kind}")
    if attached is not expect:
        raise UapiError(errno.EINVAL, f"PASID {c.pasid} is attached to {attached!r}")


OPS = {
    uapi.IOMMU_TEST_OP_ADD_RESERVED: _add_reserved,
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN: _mock_domain,
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: _mock_domain,
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: _mock_domain_replace,
    uapi.IOMMU_TEST_OP_MD_CHECK_MAP: _md_check_map,
    uapi.IOMMU_TEST_OP_MD_CHECK_REFS: _md_check_refs,
    uapi.IOMMU_TEST_OP_CREATE_ACCESS: _create_access,
    uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: _destroy_access_pages,
    uapi.IOMMU_TEST_OP_ACCESS_PAGES: _access_pages,
    uapi.IOMMU_TEST_OP_ACCESS_RW: _access_rw,
    uapi.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: _set_temp_memory_limit,
    uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: _access_replace_ioas,
    uapi.IOMMU_TEST_OP_DIRTY: _dirty,
    uapi.IOMMU_TEST_OP_DEV_CHECK_CACHE: _dev_check_cache,
    uapi.IOMMU_TEST_OP_TRIGGER_IOPF: _trigger_iopf,
    uapi.IOMMU_TEST_OP_PASID_ATTACH: _pasid_attach,
    uapi.IOMMU_TEST_OP_PASID_REPLACE: _pasid_replace,
    uapi.IOMMU_TEST_OP_PASID_DETACH: _pasid_detach,
    uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT: _pasid_check_hwpt,
    uapi.IOMMU_TEST_OP_DMABUF_GET: _dmabuf_get,
    uapi.IOMMU_TEST_OP_DMABUF_REVOKE: _dmabuf_revoke,
}

# The ops that copy the struct back (iommufd_ucmd_respond); the others write nothing.
RESPOND_OPS = frozenset((
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN, uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
    uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, uapi.IOMMU_TEST_OP_CREATE_ACCESS,
    uapi.IOMMU_TEST_OP_DIRTY,
    uapi.IOMMU_TEST_OP_ACCESS_PAGES, uapi.IOMMU_TEST_OP_PASID_ATTACH,
    uapi.IOMMU_TEST_OP_PASID_REPLACE))

_SIZEOF = uapi.sizeof("iommu_test_cmd")


def _respond(arg, cdata, size):
    if cdata.op in RESPOND_OPS:
        write_struct(arg, cdata, _SIZEOF, size)


@ioctl(uapi.IOMMU_TEST_CMD, "iommu_test_cmd", "last", respond=_respond)
def iommu_test_cmd(ctx, caller, cmd):
    """IOMMU_TEST_CMD (reference §12): the op in ``op``, its object or
    access fd in ``id``, its fields in the union. EOPNOTSUPP for ops not
    emulated (MD_CHECK_IOTLB, TRIGGER_VEVENT: nesting and the vIOMMU) and
    unknown ones; each op's rules are in its function here."""
    handler = OPS.get(cmd.op)
    if handler is None:
        raise UapiError(errno.EOPNOTSUPP, f"test op {cmd.op}")
    handler(ctx, caller, cmd)
