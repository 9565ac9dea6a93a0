"""The IOMMU itself: routing {RID, PASID} to what translates (routing.py),
device DMA and I/O page faults (dma.py), PASID spaces (pasid.py), SVA bonds
(sva.py), the driver side of a device (driver.py)."""
