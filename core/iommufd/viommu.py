"""The vIOMMU family: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC,
IOMMU_VEVENTQ_ALLOC and IOMMU_HW_QUEUE_ALLOC (reference §9.5).

Neither IOMMU the emulator has (the topology's, the selftest mock) offers a
vIOMMU yet, so no VIOMMU object can exist: each ioctl has its table slot and
runs the core's checks in the kernel's order up to the point where the
kernel would ask the driver for a vIOMMU (EOPNOTSUPP) or look one up
(ENOENT). Nesting and the vIOMMU itself are a separate issue.
"""
import errno

from .. import uapi
from ..errors import UapiError
from ..mm.iova import U64_MAX
from .ucmd import ioctl


def _no_viommu(ctx, viommu_id):
    # A VIOMMU object never exists here: every id is "not a vIOMMU".
    ctx.get_kind(viommu_id, "VIOMMU")


@ioctl(uapi.IOMMU_VIOMMU_ALLOC, "iommu_viommu_alloc", "out_viommu_id")
def viommu_alloc(ctx, caller, cmd):
    """IOMMU_VIOMMU_ALLOC (§9.5, order confirmed there): EOPNOTSUPP flags
    != 0 or type DEFAULT; ENOENT unknown dev_id; then EOPNOTSUPP: the
    device's IOMMU driver has no vIOMMU support (none emulated has one).
    ``__reserved`` is not checked, as in the kernel."""
    if cmd.flags or cmd.type == uapi.IOMMU_VIOMMU_TYPE_DEFAULT:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x} / type {cmd.type:#x}")
    ctx.get_kind(cmd.dev_id, "DEVICE")
    raise UapiError(errno.EOPNOTSUPP, "the IOMMU driver has no vIOMMU support")


@ioctl(uapi.IOMMU_VDEVICE_ALLOC, "iommu_vdevice_alloc", "virt_id")
def vdevice_alloc(ctx, caller, cmd):
    """IOMMU_VDEVICE_ALLOC (§9.5): the vIOMMU is looked up first: ENOENT
    (no VIOMMU object can exist here)."""
    _no_viommu(ctx, cmd.viommu_id)


@ioctl(uapi.IOMMU_VEVENTQ_ALLOC, "iommu_veventq_alloc", "out_veventq_fd")
def veventq_alloc(ctx, caller, cmd):
    """IOMMU_VEVENTQ_ALLOC (§9.5): EOPNOTSUPP flags or ``__reserved`` != 0,
    or type DEFAULT; EINVAL depth 0 or above 1 << 19 (current kernels);
    ENOENT not a vIOMMU (none can exist here)."""
    if cmd.flags or cmd.__reserved or cmd.type == uapi.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x} / type {cmd.type:#x}")
    if not cmd.veventq_depth or cmd.veventq_depth > uapi.IOMMU_VEVENTQ_MAX_DEPTH:
        raise UapiError(errno.EINVAL, f"depth {cmd.veventq_depth}")
    _no_viommu(ctx, cmd.viommu_id)


@ioctl(uapi.IOMMU_HW_QUEUE_ALLOC, "iommu_hw_queue_alloc", "length")
def hw_queue_alloc(ctx, caller, cmd):
    """IOMMU_HW_QUEUE_ALLOC (§9.5): EOPNOTSUPP flags != 0 or type DEFAULT;
    EINVAL length 0; EOVERFLOW nesting_parent_iova + length - 1 wraps;
    ENOENT not a vIOMMU (none can exist here)."""
    if cmd.flags or cmd.type == uapi.IOMMU_HW_QUEUE_TYPE_DEFAULT:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x} / type {cmd.type:#x}")
    if not cmd.length:
        raise UapiError(errno.EINVAL, "length 0")
    if cmd.nesting_parent_iova + cmd.length - 1 > U64_MAX:
        raise UapiError(errno.EOVERFLOW, "nesting_parent_iova + length wraps")
    _no_viommu(ctx, cmd.viommu_id)
