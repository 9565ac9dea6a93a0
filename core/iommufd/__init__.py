"""The iommufd objects (the kernel's drivers/iommu/iommufd): the ioctl table
(ucmd.py, dispatch.py) and one module per object type."""
