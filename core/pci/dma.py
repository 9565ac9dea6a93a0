"""The device's DMA port and the error a DMA raises.

A model never touches client memory: every DMA is a request to the IOMMU at
{RID, PASID, IOVA} (DESIGN.md "The VFIO device half"). The transport supplies
an object with this interface (duck-typed, nothing to inherit)::

    read(iova: int, length: int, pasid: int | None = None) -> bytes
    write(iova: int, data: bytes, pasid: int | None = None) -> None

Both raise :class:`DmaError` when the IOMMU refuses (no translation, no
permission, not attached). ``read`` returns exactly ``length`` bytes.
"""
import errno as _errno


class DmaError(Exception):
    """A DMA at ``iova`` failed with ``errno`` (positive, e.g. errno.EFAULT).

    The errnos of DESIGN.md's dma frame: EFAULT (no translation), EACCES
    (permission), ENODEV (not attached), plus EIO from :class:`PciDevice` when
    Bus Master Enable is clear or the function is in D3hot (virtio-pci.md §1.4).
    """

    def __init__(self, err, iova, detail=""):
        super().__init__(err, iova, detail or _errno.errorcode.get(err, str(err)))
        self.errno = err
        self.iova = iova
        self.detail = detail

    def __repr__(self):
        return f"DmaError({_errno.errorcode.get(self.errno, self.errno)}, {self.iova:#x})"
