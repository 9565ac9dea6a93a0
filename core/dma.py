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
import struct
import time

from cext._native import ffi

from . import routing
from .errors import UapiError
from .routing import RID

MAGIC = b"IODM"
OP_READ = 1
OP_WRITE = 2
FLAG_PASID = 1
FLAG_NO_PRI = 2
REQ = struct.Struct("<4sIIIQII")
REPLY = struct.Struct("<4siIIQ")
# A frame must fit one FUSE request (max_write / max_read 1 MiB, fuse-notes §1.2).
MAX_DMA = 512 * 1024
FAULT_LOG_MAX = 64

READ, WRITE = 1, 2  # page-table access bits


def reply(status=0, moved=0, fault_iova=0, data=b""):
    """Build a reply frame (bytes)."""
    return REPLY.pack(MAGIC, status, moved, 0, fault_iova) + data


def _record_fault(device, pasid, iova, access, err):
    device.fault_log.append({
        "time": time.time(), "rid": device.rid,
        "pasid": None if pasid is RID else pasid, "iova": iova,
        "access": "write" if access & WRITE else "read",
        "status": -err,
    })
    del device.fault_log[:-FAULT_LOG_MAX]


class DmaFault(Exception):
    """A DMA that cannot complete: ``errno`` (EFAULT no translation, EACCES
    permission, ENODEV not attached) and the first faulting ``iova``."""

    def __init__(self, err, iova):
        super().__init__(err, iova)
        self.errno = err
        self.iova = iova


def route(emulator, device, pasid, iova):
    """The Route (core.routing) that DMA from ``device`` with ``pasid``
    (RID when None; for an mdev its default PASID) takes: an mdev's DMA
    carries its parent's RID (seed 004), a device behind a bridge its alias
    RID (seed 001), so the route may be another device's attachment.

    Raises DmaFault: ENODEV nothing is attached at the RID (for DMA without
    PASID) or at all on the RID; EFAULT the PASID has no route (the IOMMU
    finds no PASID table entry: a translation fault).
    """
    topo = emulator.topology
    found = routing.find(topo, device.rid, pasid)
    if found is not None:
        return found
    if pasid is RID or not routing.routes_of(topo, device.rid):
        raise DmaFault(errno.ENODEV, iova)
    raise DmaFault(errno.EFAULT, iova)


def dma_frame(emulator, device, caller, request):
    """Execute one IODM request frame from ``caller``; returns the reply frame.

    Statuses: EINVAL bad frame (a PASID the device cannot emit included);
    ENODEV not attached; EFAULT no translation (a PASID without route);
    EACCES permission (page table) or the caller's uid may not touch the
    owner's memory (only the owner's uid or root may, DESIGN.md security).
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
    access = WRITE if op == OP_WRITE else READ
    if device.is_mdev:
        pasid = device.default_pasid
    try:
        r = route(emulator, device, pasid, iova)
        pieces = r.target.dma_pieces(iova, length, access)
    except DmaFault as e:
        _record_fault(device, pasid, e.iova, access, e.errno)
        return reply(-e.errno, 0, e.iova)
    for owner, _ in pieces:
        if caller.uid not in (0, owner.uid):
            _record_fault(device, pasid, iova, access, errno.EACCES)
            return reply(-errno.EACCES, 0, iova)
    if op == OP_WRITE:
        local = ffi.from_buffer(request)
        offset = REQ.size
    else:
        local = ffi.new("char[]", length)
        offset = 0
    moved = 0
    for owner, osegs in pieces:
        n = sum(s[1] for s in osegs)
        csegs = ffi.new("struct iofs_seg[]", len(osegs))
        for i, (a, ln) in enumerate(osegs):
            csegs[i].addr = a
            csegs[i].len = ln
        try:
            done = owner.rw_segments(csegs, len(osegs), local + offset + moved, op == OP_WRITE)
        except UapiError:
            done = 0
        moved += done
        if done != n:
            _record_fault(device, pasid, iova + moved, access, errno.EFAULT)
            data = ffi.buffer(local, moved)[:] if op == OP_READ else b""
            return reply(-errno.EFAULT, moved, iova + moved, data)
    data = ffi.buffer(local, length)[:] if op == OP_READ else b""
    return reply(0, moved, 0, data)
