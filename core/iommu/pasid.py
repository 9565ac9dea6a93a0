"""PASID spaces (seed 003, "per-domain PASID").

A PASID is routing information of an attachment, not a property of a page
table: the driver allocates it, then attaches it to an I/O address space.
Where it is allocated from is the device driver's policy (seed 003):

- by default from the device's own space, ``[1, 1 << pasid_bits)``: two
  devices may use the same PASID value for different address spaces;
- from one system-wide space for devices that need a global PASID (ENQCMD
  writes the PASID from a CPU MSR, so every device must agree on it), and
  for the SVA bonds of those devices (a process has one PASID everywhere).

PASID 0 is never handed out: it stands for DMA without PASID (the RID) on
IOMMUs that reserve it, as the kernel's IOMMU_NO_PASID.
"""
import errno
import heapq

from ..errors import UapiError


class PasidSpace:
    """PASIDs ``1 .. (1 << bits) - 1``, lowest free first (the kernel's ida).

    ``name`` says whose space it is, for messages and ``info``.
    """

    def __init__(self, bits, name):
        self.bits = bits
        self.limit = 1 << bits
        self.name = name
        self.used = set()
        self._free = []          # heap of freed PASIDs below _next
        self._next = 1

    def alloc(self):
        """The lowest free PASID. Raises UapiError(ENOSPC) when the space is
        exhausted (or has no PASIDs at all: ``bits == 0``)."""
        while self._free:
            p = heapq.heappop(self._free)
            if p not in self.used:
                self.used.add(p)
                return p
        if self._next >= self.limit:
            raise UapiError(errno.ENOSPC, f"{self.name}: all {self.limit - 1} PASIDs in use")
        p = self._next
        self._next += 1
        self.used.add(p)
        return p

    def free(self, pasid):
        """Return ``pasid`` to the space. Raises UapiError(ENOENT) if it is
        not allocated."""
        if pasid not in self.used:
            raise UapiError(errno.ENOENT, f"{self.name}: PASID {pasid} is not allocated")
        self.used.remove(pasid)
        if pasid == self._next - 1:
            self._next -= 1
            # Shrink past freed PASIDs at the top so the heap stays small.
            while self._next > 1 and self._next - 1 not in self.used:
                self._next -= 1
            self._free = [p for p in self._free if p < self._next]
            heapq.heapify(self._free)
        else:
            heapq.heappush(self._free, pasid)

    def __contains__(self, pasid):
        return pasid in self.used

    def __len__(self):
        return len(self.used)


def space_of(emulator, device):
    """The space ``device``'s driver allocates PASIDs from: the global one
    for ENQCMD devices, else the device's own (created on first use).
    Raises UapiError(EOPNOTSUPP) for a device without PASID support (an mdev
    included: it DMAs with its parent's PASID, seed 004)."""
    if device.pasid_bits == 0:
        raise UapiError(errno.EOPNOTSUPP, f"{device.name} has no PASID capability")
    if device.enqcmd:
        return emulator.global_pasids
    if device.pasids is None:
        device.pasids = PasidSpace(device.pasid_bits, device.name)
    return device.pasids
