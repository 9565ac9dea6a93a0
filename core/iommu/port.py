"""The DMA port of a device model (core/pci): model DMA through the IOMMU.

A model never touches client memory itself (DESIGN.md, the VFIO device
half): each DMA is a request at {RID, PASID, IOVA} that takes the same path
as ``devices/<name>/dma`` (core.iommu.dma): the route picks the attachment,
the page table translates the whole range (A/D bits set only when all of it
translates; dirty tracking sees the write), the owner of each translated
segment comes from the translation, and a failure is recorded in the
device's fault log. Unlike an IODM frame, a model's DMA does not wait for
a page response: a model runs synchronously inside a register write, so a
translation fault fails the DMA at once (as a device without PRI does).
"""
import errno

from cext._native import ffi

from ..errors import DmaFault
from ..iommufd.ioas import adopt_owner
from ..pci.dma import DmaError
from .dma import READ, WRITE, copy_pieces, foreign_owner, record_fault, route
from .routing import RID


class IommuPort:
    """The DMA port (core.pci.dma interface) of ``device`` (a LiveDevice)
    in ``emulator``: ``read(iova, length, pasid=None) -> bytes`` and
    ``write(iova, data, pasid=None)``, bytes at an IOVA, raising
    core.pci.DmaError(errno, iova): ENODEV nothing attached, EFAULT no
    translation (or the owner's memory is gone), EACCES page-table
    permission, or memory of a uid that the device's driver (the uid that
    bound it) may not touch, EINVAL a PASID the device cannot emit."""

    def __init__(self, emulator, device):
        self.emulator = emulator
        self.device = device

    def read(self, iova, length, pasid=None):
        buf = ffi.new("char[]", max(length, 1))
        self._dma(READ, [(iova, length)], pasid, buf)
        return ffi.buffer(buf, length)[:]

    def write(self, iova, data, pasid=None):
        self._dma(WRITE, [(iova, len(data))], pasid, ffi.from_buffer(data))

    def read_spans(self, spans, pasid=None):
        """Gather ``spans`` ([(iova, bytes)]) into one bytes object: every
        span is translated first, then the bytes move in as few
        process_vm_readv calls as the owners allow (a virtqueue chain of
        4 KiB guest pages is one call, not one per page)."""
        total = sum(n for _, n in spans)
        buf = ffi.new("char[]", max(total, 1))
        self._dma(READ, spans, pasid, buf)
        return ffi.buffer(buf, total)[:]

    def write_spans(self, spans, data, pasid=None):
        """Scatter ``data`` over ``spans`` ([(iova, bytes)], their lengths
        summing to len(data)), translated first, moved as :meth:`read_spans`."""
        self._dma(WRITE, spans, pasid, ffi.from_buffer(data))

    def _dma(self, access, spans, pasid, local, adopted=False):
        dev = self.device
        # IOVA-contiguous spans (a guest's pages are often adjacent) are one
        # translation: the per-span cost is what a virtqueue chain pays.
        merged_spans = []
        for a, n in spans:
            if not n:
                continue
            if merged_spans and merged_spans[-1][0] + merged_spans[-1][1] == a:
                merged_spans[-1][1] += n
            else:
                merged_spans.append([a, n])
        spans = merged_spans
        if not spans:
            return
        first = spans[0][0]
        if pasid is not None and (dev.pasid_bits == 0 or pasid >> dev.pasid_bits):
            raise DmaError(errno.EINVAL, first, f"{dev.name} cannot emit PASID {pasid}")
        if pasid is None:
            pasid = dev.default_pasid if dev.is_mdev else RID
        # Translate every span before a byte moves: a fault anywhere leaves
        # memory as it was (and A/D bits as the page table's own rule says).
        pieces = []
        r = None
        for iova, length in spans:
            if iova + length > 1 << 64:
                raise DmaError(errno.EFAULT, iova, "IOVA range wraps")
            try:
                if r is None:
                    r = route(self.emulator, dev, pasid, iova)
                pieces.extend(r.target.dma_pieces(iova, length, access))
            except DmaFault as e:
                record_fault(dev, pasid, e.iova, access, e.errno)
                raise DmaError(e.errno, e.iova) from None
        bound = dev.bound
        uid = bound.ctx.uid if bound is not None else 0
        foreign = foreign_owner(pieces, uid)
        if foreign is not None:
            record_fault(dev, pasid, first, access, errno.EACCES)
            raise DmaError(errno.EACCES, first, f"memory of uid {foreign.uid}")
        _moved, short = copy_pieces(pieces, local, access == WRITE)
        if short is not None:
            # As the dma node's DMA: shared memory pinned by a process that
            # has exited lives on (core.iommufd.ioas.adopt); translate again.
            if (not adopted and bound is not None and not short.alive()
                    and adopt_owner(bound.ctx, short)):
                return self._dma(access, spans, pasid, local, adopted=True)
            record_fault(dev, pasid, first, access, errno.EFAULT)
            raise DmaError(errno.EFAULT, first, "owner memory unreachable")
