"""The iommufd objects: the ioctl table and one module per object type (the kernel's drivers/iommu/iommufd)."""
