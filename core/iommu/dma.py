"""The emulated devices' DMA engine: ``devices/<name>/dma`` (DESIGN.md).

One IODM request frame in, one reply frame out. The IOMMU side is faithful to
hardware: the request's route {RID, PASID} picks the attachment, the HWPT's
page table translates the whole IOVA range first (setting accessed/dirty bits
only when all of it translates), and only then do bytes move, to or from the
memory of the process that owns each mapped area.

Request: magic ``IODM``, op u32 (1 read: memory -> device, 2 write: device ->
memory), flags u32 (bit 0 PASID valid, bit 1 no PRI), pasid u32, iova u64,
length u32, reserved u32, then ``length`` bytes of data for a write.
Reply: magic, status i32 (0 or -errno), bytes moved u32, reserved u32,
faulting IOVA u64, then the data of a read.
"""
import errno
import time

from cext._native import ffi

from .. import uapi, wire
from ..errors import DmaFault, UapiError
from ..files import REQUEST_FRAMES, File, NotYet, Wait
from ..iommufd import ioas as _ioas
from ..iommufd.fault import SUCCESS, FaultGroup
from . import routing
from .routing import RID
from .sva import SvaBond

# The IODM frame (core.wire), by short names.
MAGIC = wire.IODM_MAGIC
OP_READ = wire.IODM_OP_READ
OP_WRITE = wire.IODM_OP_WRITE
FLAG_PASID = wire.IODM_FLAG_PASID
FLAG_NO_PRI = wire.IODM_FLAG_NO_PRI
REQ = wire.IODM_REQUEST
REPLY = wire.IODM_REPLY
MAX_DMA = wire.IODM_MAX_LENGTH
FAULT_LOG_MAX = 64

READ, WRITE = 1, 2  # page-table access bits


def reply(status=0, moved=0, fault_iova=0, data=b""):
    """Build a reply frame (bytes)."""
    return REPLY.pack(MAGIC, status, moved, 0, fault_iova) + data


def record_fault(device, pasid, iova, access, err):
    device.fault_log.append({
        "time": time.time(), "rid": device.rid,
        "pasid": None if pasid is RID else pasid, "iova": iova,
        "access": "write" if access & WRITE else "read",
        "status": -err,
    })
    del device.fault_log[:-FAULT_LOG_MAX]


def route(emulator, device, pasid, iova):
    """The Route (core.iommu.routing) that DMA from ``device`` with ``pasid``
    (RID when None; for an mdev its default PASID) takes: an mdev's DMA
    carries its parent's RID (seed 004), a device behind a bridge its alias
    RID (seed 001), so the route may be another device's attachment.

    Raises DmaFault: ENODEV nothing is attached at the RID (for DMA without
    PASID) or at all on the RID; EFAULT the PASID has no route (the IOMMU
    finds no PASID table entry: a translation fault).
    """
    found = routing.find(emulator, device.rid, pasid)
    if found is not None:
        return found
    if pasid is RID or not routing.routes_of(emulator, device.rid):
        raise DmaFault(errno.ENODEV, iova)
    raise DmaFault(errno.EFAULT, iova)


class DmaWait(Wait):
    """Core's "not yet" for a DMA that raised a page request group (PRI):
    the transport waits until ``wait_fd`` is readable, then calls
    ``resume()`` (core lock held) for the reply frame; if the waiting DMA is
    cancelled instead (INTERRUPT, the writer gone) it calls ``abandon()``."""

    def __init__(self, group, resume):
        NotYet.__init__(self, "waiting for a page response")
        self.group = group
        self.resume = resume
        self.abandon = group.abandon

    @property
    def fd(self):
        # Made only for a waiter that polls: a subscriber needs no fd.
        return self.group.waiter_fd()

    wait_fd = fd

    def subscribe(self, fn):
        return self.group.subscribe(fn)


class DmaPort(File):
    """An open of ``devices/<name>/dma``: the device's DMA engine. Each
    write() is one IODM request (:meth:`request`), its reply the writing
    thread's next read() (DESIGN.md, the emulated device)."""

    frames = REQUEST_FRAMES

    def __init__(self, emulator, device):
        self.emulator = emulator
        self.device = device

    def request(self, caller, data):
        """One IODM request frame (bytes) -> its reply frame (bytes), or
        DmaWait. Frame errors and faults are statuses in the reply."""
        return dma_frame(self.emulator, self.device, caller, data)

    @staticmethod
    def failure(err):
        """The reply of a request the transport could not serve (EIO)."""
        return reply(-err)


def dma_frame(emulator, device, caller, request):
    """Execute one IODM request frame from ``caller``; returns the reply frame.

    Statuses: EINVAL bad frame (a PASID the device cannot emit included);
    ENODEV not attached; EFAULT no translation (a PASID without route, a
    page request answered INVALID); EACCES permission (page table) or the
    caller's uid may not touch the owner's memory (only the owner's uid or
    root may, DESIGN.md security).

    I/O page faults (seed 004, reference §10.1): when the translation fails
    on a HWPT with a fault queue and the device has PRI (and the frame does
    not say "no PRI"), the pages that fail become one page request group in
    the queue and DmaWait is raised; its ``resume()`` retries the DMA once
    after a SUCCESS response (a second miss fails) and fails it with EFAULT
    after INVALID. Without PRI or a fault queue the DMA fails at once.
    """
    if len(request) < REQ.size:
        return reply(-errno.EINVAL)
    magic, op, flags, pasid, iova, length, rsvd = REQ.unpack_from(request)
    if (magic != MAGIC or op not in (OP_READ, OP_WRITE) or flags & ~(FLAG_PASID | FLAG_NO_PRI)
            or rsvd or length > MAX_DMA
            or len(request) != REQ.size + (length if op == OP_WRITE else 0)):
        return reply(-errno.EINVAL)
    if flags & FLAG_PASID:
        # A device emits only PASIDs its capability allows; an mdev's DMA
        # always carries its default PASID (seed 004), never one of its own.
        if pasid >> device.pasid_bits:
            return reply(-errno.EINVAL)
    else:
        pasid = RID
    if length == 0:
        return reply()
    if iova + length > 1 << 64:
        return reply(-errno.EINVAL)
    if device.is_mdev:
        pasid = device.default_pasid
    dma = _Dma(emulator, device, caller, op, pasid, iova, length, request,
               pri=device.pri and not flags & FLAG_NO_PRI)
    return dma.run()


class _Dma:
    """One DMA request on its way through the IOMMU (see :func:`dma_frame`)."""

    def __init__(self, emulator, device, caller, op, pasid, iova, length, request, pri):
        self.emulator = emulator
        self.device = device
        self.caller = caller
        self.op = op
        self.access = WRITE if op == OP_WRITE else READ
        self.pasid = pasid
        self.iova = iova
        self.length = length
        self.request = request
        self.pri = pri

    def fail(self, err, iova, moved=0, data=b""):
        record_fault(self.device, self.pasid, iova, self.access, err)
        return reply(-err, moved, iova, data)

    def run(self, adopted=False):
        r = None
        try:
            r = route(self.emulator, self.device, self.pasid, self.iova)
            pieces = r.target.dma_pieces(self.iova, self.length, self.access)
        except DmaFault as e:
            if self.pri and r is not None and e.errno in (errno.EFAULT, errno.EACCES):
                self._page_request(r, e)      # raises DmaWait when a queue takes it
            return self.fail(e.errno, e.iova)
        return self.move(pieces, None if adopted else getattr(r.target, "ctx", None))

    def _page_request(self, r, e):
        target = r.target
        if isinstance(target, SvaBond):
            # The emulated kernel handler answers at once (docs/driver-side.md).
            target.driver.iopf(target, e.iova, self.access)
            return
        queue = target.fault
        if queue is None:
            return
        addrs = target.missing_pages(self.iova, self.length, self.access)
        perm = (uapi.IOMMU_PGFAULT_PERM_WRITE if self.access & WRITE
                else uapi.IOMMU_PGFAULT_PERM_READ)
        key = RID if r.device.is_mdev else self.pasid
        group = FaultGroup(r.idev, key, self.pasid, next_grpid(self.device), perm, addrs, target)
        queue.report(group)
        first_fault = e

        def resume():
            group.release_fd()
            if group.done != SUCCESS:
                return self.fail(first_fault.errno, first_fault.iova)
            self.pri = False        # one page request round per DMA
            return self.run()

        raise DmaWait(group, resume)

    def move(self, pieces, ctx=None):
        if foreign_owner(pieces, self.caller.uid) is not None:
            return self.fail(errno.EACCES, self.iova)
        if self.op == OP_WRITE:
            local = ffi.from_buffer(self.request) + REQ.size
        else:
            local = ffi.new("char[]", self.length)
        moved, short = copy_pieces(pieces, local, self.op == OP_WRITE)
        if short is not None:
            # Shared memory pinned by a process that has exited lives on
            # (core.iommufd.ioas.adopt): translate again, once.
            if ctx is not None and not short.alive() and _ioas.adopt_owner(ctx, short):
                return self.run(adopted=True)
            data = ffi.buffer(local, moved)[:] if self.op == OP_READ else b""
            return self.fail(errno.EFAULT, self.iova + moved, moved, data)
        data = ffi.buffer(local, self.length)[:] if self.op == OP_READ else b""
        return reply(0, moved, 0, data)


def foreign_owner(pieces, uid):
    """The first owner in ``pieces`` whose memory a DMA on behalf of ``uid``
    may not touch (only the owner's uid or root may: DESIGN.md, security),
    or None."""
    for owner, _ in pieces:
        if uid not in (0, owner.uid):
            return owner
    return None


def copy_pieces(pieces, local, write):
    """Move bytes between ``local`` (a cffi char pointer) and the memory of
    the owners in ``pieces`` (``[(Owner, [(va, bytes)])]`` in IOVA order,
    as HWPT.dma_pieces gives them), ``write`` towards the owners. A run of
    pieces of one owner is one process_vm_* call. Returns ``(bytes moved,
    None)``, or ``(bytes moved before it, Owner)`` for the owner whose copy
    fell short (unmapped, gone)."""
    moved = i = 0
    while i < len(pieces):
        owner, segs = pieces[i][0], list(pieces[i][1])
        i += 1
        while i < len(pieces) and pieces[i][0] is owner:
            segs.extend(pieces[i][1])
            i += 1
        csegs = ffi.new("struct iofs_seg[]", len(segs))
        for k, (a, ln) in enumerate(segs):
            csegs[k].addr = a
            csegs[k].len = ln
        try:
            done = owner.rw_segments(csegs, len(segs), local + moved, write)
        except UapiError:
            done = 0
        moved += done
        if done != sum(ln for _, ln in segs):
            return moved, owner
    return moved, None


def next_grpid(device):
    """The next page request group index of ``device`` (9 bits, PCIe PRI)."""
    device.prg_next = (device.prg_next + 1) % 512
    return device.prg_next
