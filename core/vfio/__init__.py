"""The VFIO side: the device cdev (cdev.py) and the type1 container
compatibility on /dev/iommu (compat.py)."""
