"""The static table of /dev/iommu ioctls: slot ``nr`` -> :class:`core.iommufd.ucmd.Op`.

As the kernel's ``iommufd_ioctl_ops[]``, the table names every op; each
handler lives in the module of its object type and declares its slot there
(core.iommufd.ucmd.ioctl). This module imports the handler modules, never the other
way round, and a number missing here is an empty slot (ENOTTY): the README's
"Implemented ioctls" table is checked against it (tests/test_dispatch.py).

The generic rules are core.iommufd.ucmd's; :func:`iommufd_ioctl` adds routing
(step 1: outside the table, the VFIO type1 compatibility layer) and the
publish-or-abort of step 7.
"""
from ..errors import UapiError
from ..files import IOCTL_FRAMES, TRANSPORT_IOCTLS, File
from ..vfio import compat
from . import context, device, fault, hwpt, ioas, selftest, ucmd, viommu

# The table's last slot: IOMMU_TEST_CMD (the emulator is built like a kernel
# with CONFIG_IOMMUFD_TEST, §2), so 0x95..0x9f are empty slots. 0x95 is
# IOMMU_IOAS_NOIOMMU_GET_PA in Debian's 7.3 header, from an out-of-tree
# series whose rules are not known (§2: do not rely on 0x95); the emulator
# has no noiommu devices either, so it stays empty.
_FIRST_NR = 0x80
_LAST_NR = 0xA0


def _table(*handlers):
    ops = {}
    for h in handlers:
        nr = h.op.cmd & 0xFF
        assert _FIRST_NR <= nr <= _LAST_NR and nr not in ops, h
        ops[nr] = h.op
    return ops


OPS = _table(
    context.iommu_destroy,
    ioas.ioas_alloc,
    ioas.ioas_allow_iovas,
    ioas.ioas_copy,
    ioas.ioas_iova_ranges,
    ioas.ioas_map,
    ioas.ioas_unmap,
    ioas.iommu_option,
    compat.vfio_ioas,
    hwpt.hwpt_alloc,
    device.get_hw_info,
    hwpt.hwpt_set_dirty_tracking,
    hwpt.hwpt_get_dirty_bitmap,
    hwpt.hwpt_invalidate,
    fault.fault_queue_alloc,
    ioas.ioas_map_file,
    viommu.viommu_alloc,
    viommu.vdevice_alloc,
    ioas.ioas_change_process,
    viommu.veventq_alloc,
    viommu.hw_queue_alloc,
    selftest.iommu_test_cmd,
)


def iommufd_ioctl(ctx, caller, cmd, arg):
    """Run ioctl(iommufd, cmd, arg) against ``ctx``: the result or UapiError.

    The generic rules (core.iommufd.ucmd) are applied here and nowhere else.
    """
    ctx.check_caller(caller)
    nr = cmd & 0xFF
    if nr < _FIRST_NR or nr > _LAST_NR:
        return compat.vfio_compat_ioctl(ctx, caller, cmd, arg)
    op = OPS.get(nr)
    cdata, size = ucmd.decode(op, cmd, arg)
    try:
        result = op.handler(ctx, caller, cdata)
        ucmd.respond(op, arg, cdata, size)
    except UapiError as e:
        ctx.rollback()
        caller.returned.clear()     # the objects behind returned fds are gone
        if getattr(e, "respond", False):
            # EMSGSIZE of IOVA_RANGES: the struct is written back all the same.
            ucmd.write_struct(arg, cdata, op.sizeof, size)
        raise
    except BaseException:
        ctx.rollback()
        caller.returned.clear()
        raise
    ctx.commit()
    return result or 0


class IommufdFile(File):
    """An open of /dev/iommu (the kernel's iommufd_fops): its Context
    ``ctx``. ioctl() is :func:`iommufd_ioctl`; closing it closes the
    context (idempotent: a synchronous close and the later release)."""

    frames = IOCTL_FRAMES
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, ctx):
        self.ctx = ctx

    @property
    def uid(self):
        return self.ctx.uid

    def ioctl(self, caller, cmd, arg):
        return iommufd_ioctl(self.ctx, caller, cmd, arg)

    def release(self):
        self.ctx.close()

    def fget(self):
        return self.ctx
