"""VFIO type1 compatibility on /dev/iommu (reference §11.4).

Not emulated yet: every command outside the iommufd table is ENOTTY, which is
what the kernel answers for numbers its compat handler does not know, without
touching the argument (§2).
"""
import errno

from .errors import UapiError


def vfio_compat_ioctl(ctx, caller, cmd, arg):
    """ioctl on /dev/iommu with nr < 0x80 or past the table: ENOTTY."""
    raise UapiError(errno.ENOTTY, f"no compat ioctl {cmd:#x}")
