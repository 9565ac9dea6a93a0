"""The IOMMU itself: routing {RID, PASID} to what translates, device DMA and I/O page faults, PASID spaces, SVA, the driver side of a device."""
