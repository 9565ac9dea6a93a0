"""DEVICE objects: a topology device bound to a context (reference §8).

A :class:`BoundDevice` is the RFC's ``iommu_dev`` (seed 000): the device plus
its context, made by VFIO_DEVICE_BIND_IOMMUFD. Its attachments are keyed by
PASID (``None`` = the RID), each naming the HWPT that translates that route;
the PASID lives in the attachment, not in the page table (seed 003).
"""
import errno

from .. import uapi
from ..errors import UapiError
from ..iommu.routing import RID, occupant
from .context import Obj
from .hwpt import HwptPaging, new_paging_hwpt
from .ioas import Ioas
from .ucmd import ioctl


class BoundDevice(Obj):
    """The DEVICE object. ``device``: the topology Device; ``attachments``:
    {pasid or RID: HwptPaging}. Not destroyable by IOMMU_DESTROY (EBUSY, §4):
    closing the VFIO device fd unbinds it."""

    kind = "DEVICE"
    user_destroyable = False

    def __init__(self, ctx, device):
        super().__init__(ctx)
        self.device = device
        self.attachments = {}

    # -- attach / replace / detach (§8) -----------------------------------------
    def _resolve_pt(self, pt_id, pasid):
        obj = self.ctx.find(pt_id)
        if obj is None:
            raise UapiError(errno.ENOENT, f"pt_id {pt_id}")
        if isinstance(obj, Ioas):
            if pasid is not RID:
                raise UapiError(errno.EINVAL, "an IOAS cannot be attached to a PASID")
            return obj
        if isinstance(obj, HwptPaging):
            return obj
        raise UapiError(errno.EINVAL, f"pt_id {pt_id} is a {obj.kind}")

    def _check_group(self, hwpt, pasid):
        # Devices sharing a RID reach one domain per PASID (seed 001, §8).
        for other in self.group_peers():
            theirs = other.bound.attachments.get(pasid) if other.bound else None
            if theirs is not None and theirs is not hwpt:
                raise UapiError(errno.EINVAL, f"group peer {other.name} uses HWPT {theirs.id}")

    def _check_route_free(self, pasid):
        # The key this attachment takes on the wire may be held by another
        # device sharing the RID that is not a group peer (an mdev and its
        # parent, seed 004) or by an SVA bond: the IOMMU could not tell the
        # two apart, so the second one is refused.
        route = occupant(self.ctx.emulator, self.device, pasid)
        if route is not None and route.device.group != self.device.group:
            raise UapiError(errno.EBUSY, f"{route!r} already uses that RID/PASID")
        if route is not None and route.idev is None:
            raise UapiError(errno.EBUSY, f"an SVA bond uses PASID {pasid}")

    def group_peers(self):
        """Other topology devices of this device's group."""
        groups = self.ctx.emulator.groups if self.ctx.emulator else {}
        return [d for d in groups.get(self.device.group, []) if d is not self.device]

    def _check_pasid_compat(self, hwpt, pasid):
        if pasid is not RID:
            if not hwpt.pasid_compat:
                raise UapiError(errno.EINVAL, "HWPT was not allocated with IOMMU_HWPT_ALLOC_PASID")
            rid = self.attachments.get(RID)
            if rid is not None and not rid.pasid_compat:
                raise UapiError(errno.EINVAL, "RID is attached to a non-PASID HWPT")
        elif not hwpt.pasid_compat and any(p is not RID for p in self.attachments):
            raise UapiError(errno.EINVAL, "PASIDs attached: the RID needs a PASID-compatible HWPT")

    def _auto_domain(self, ioas):
        for obj in list(self.ctx.objects.values()):
            if (isinstance(obj, HwptPaging) and obj.auto and obj.ioas is ioas
                    and obj.iommu.key() == self.device.iommu.key()):
                return obj, False
        return new_paging_hwpt(self.ctx, ioas, self.device, auto=True, publish=True), True

    def attach(self, pt_id, pasid=RID, mode=None):
        """Attach the route ``pasid`` (RID when None) to ``pt_id`` (an IOAS:
        auto domain; or a paging HWPT). Returns the HWPT id now attached.

        ``mode``: None for VFIO's ATTACH, which replaces what is attached
        (§11.3); "attach" for the core's iommufd_device_attach (EBUSY when
        the RID/PASID is attached already, even to the same HWPT); "replace"
        for iommufd_device_replace (EINVAL when nothing is attached; the same
        HWPT is a no-op).

        Errors in order (§8): ENOENT unknown pt_id; EINVAL another object
        type or an IOAS for a PASID; EBUSY / EINVAL of ``mode``; EINVAL a
        group peer on another HWPT, PASID incompatibility; EBUSY the
        RID/PASID this takes on the wire is held by an mdev or parent of this
        device or by an SVA bond (core.iommu.routing); EADDRINUSE the device's
        reserved ranges collide in the IOAS; then the driver's step: EINVAL a
        HWPT of another IOMMU, a DIRTY_TRACKING HWPT for a device without
        dirty tracking, a PASID beyond the device's width, and what
        ``device.set_dev_pasid`` raises (the mock's PASID 1024: ENOMEM).
        On error the previous attachment stays as it was.

        An mdev's RID attachment is its parent's RID with the mdev's default
        PASID (seed 004): like a PASID attach it reserves no IOVA range.
        """
        target = self._resolve_pt(pt_id, pasid)
        created = False
        if isinstance(target, Ioas):
            hwpt, created = self._auto_domain(target)
        else:
            hwpt = target
        old = self.attachments.get(pasid)
        key = ("device", id(self))
        reserved = None
        try:
            if mode == "attach" and old is not None:
                raise UapiError(errno.EBUSY, f"{pasid!r} is attached already")
            if mode == "replace" and old is None:
                raise UapiError(errno.EINVAL, f"nothing attached at {pasid!r} to replace")
            if old is hwpt:
                return hwpt.id
            self._check_group(hwpt, pasid)
            self._check_pasid_compat(hwpt, pasid)
            if old is None:
                self._check_route_free(pasid)
            if self._reserves(pasid) and (old is None or old.ioas is not hwpt.ioas):
                # A new IOAS: the key is not in use there (the old IOAS keeps
                # its ranges until the swap below).
                hwpt.ioas.add_reserved(key, self.device.iommu.reserved_ranges())
                reserved = hwpt.ioas
            self._driver_attach(hwpt, pasid)
        except BaseException:
            if reserved is not None:
                reserved.remove_reserved(key)
            if created:
                self._drop_if_unused(hwpt)
            raise
        if reserved is not None and old is not None:
            old.ioas.remove_reserved(key)
        self.attachments[pasid] = hwpt.get()
        if old is not None:
            self._drop_faults(old, pasid)
            self._release(old)
        return hwpt.id

    def _driver_attach(self, hwpt, pasid):
        # The IOMMU driver's part, after the core's checks (§8): a domain of
        # another IOMMU cannot serve the device; a domain that tracks dirty
        # pages cannot serve a device whose IOMMU cannot (the selftest
        # mock's attach_dev refuses a NO_DIRTY device, Intel's domain
        # compatibility check a unit without SSADS: EINVAL, RID and PASID
        # alike); a PASID must fit the device's width; then the driver
        # itself may refuse.
        if hwpt.iommu.key() != self.device.iommu.key():
            raise UapiError(errno.EINVAL, f"HWPT {hwpt.id} belongs to another IOMMU")
        if hwpt.flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not self.device.dirty_tracking:
            raise UapiError(errno.EINVAL, f"HWPT {hwpt.id} tracks dirty pages, {self.device.name} cannot")
        if pasid is not RID:
            if pasid >> self.device.pasid_bits:
                raise UapiError(errno.EINVAL, f"PASID {pasid} beyond {self.device.pasid_bits} bits")
            self.device.set_dev_pasid(pasid, hwpt)

    def detach(self, pasid=RID):
        """Detach the route ``pasid``; nothing attached is not an error (§8).
        Faults pending for it are answered INVALID."""
        hwpt = self.attachments.pop(pasid, None)
        if hwpt is None:
            return
        if pasid is not RID:
            self.device.set_dev_pasid(pasid, None)
        if self._reserves(pasid):
            hwpt.ioas.remove_reserved(("device", id(self)))
        self._drop_faults(hwpt, pasid)
        self._release(hwpt)

    def _drop_faults(self, hwpt, pasid):
        # Pending faults of the attachment going away are answered INVALID,
        # so the DMA waiting for them fails instead of waiting forever (§8).
        if hwpt.fault is not None:
            hwpt.fault.answer_all(lambda g: g.idev is self and g.key == pasid)

    def _reserves(self, pasid):
        # Only an attachment at a PCI function's own RID enforces the device's
        # reserved regions (§8: PASID attaches do not).
        return pasid is RID and not self.device.is_mdev

    def _release(self, hwpt):
        hwpt.put()
        self._drop_if_unused(hwpt)

    def _drop_if_unused(self, hwpt):
        if hwpt.auto and hwpt.refs == 0 and self.ctx.find(hwpt.id) is hwpt:
            self.ctx.remove(hwpt)

    def destroy(self):
        for pasid in [p for p in self.attachments if p is not RID] + [RID]:
            if pasid in self.attachments:
                self.detach(pasid)
        if self.device.bound is self:
            self.device.bound = None


@ioctl(uapi.IOMMU_GET_HW_INFO, "iommu_hw_info", "__reserved")
def get_hw_info(ctx, caller, cmd):
    """IOMMU_GET_HW_INFO (reference §9.2).

    EOPNOTSUPP: flags other than INPUT_TYPE, non-zero ``__reserved``, or an
    INPUT_TYPE other than NONE or the device driver's own type (the emulated
    PCI IOMMU has no driver data; the selftest mock's is 0xfeedbeef);
    ENOENT: unknown dev_id; EFAULT: unwritable data_uptr buffer. The PCI
    capability bits are reported for PCI functions only.
    """
    if cmd.flags & ~uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x}")
    if any(cmd.__reserved):
        raise UapiError(errno.EOPNOTSUPP, "__reserved")
    idev = ctx.get(cmd.dev_id, BoundDevice)
    dev = idev.device
    data_type, data, pci = dev.hw_info()
    if (cmd.flags & uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE
            and cmd.out_data_type not in (uapi.IOMMU_HW_INFO_TYPE_NONE, data_type)):
        raise UapiError(errno.EOPNOTSUPP, f"hw_info type {cmd.out_data_type}")
    if cmd.data_len and cmd.data_uptr:
        # min(data_len, kernel_len) bytes of data, then the rest zero-filled.
        n = cmd.data_len
        caller.mem.write(cmd.data_uptr, data[:n] + bytes(max(0, n - len(data))))
    caps = 0
    if dev.dirty_tracking:
        caps |= uapi.IOMMU_HW_CAP_DIRTY_TRACKING
    if pci:
        if dev.pasid_exec:
            caps |= uapi.IOMMU_HW_CAP_PCI_PASID_EXEC
        if dev.pasid_priv:
            caps |= uapi.IOMMU_HW_CAP_PCI_PASID_PRIV
        if not dev.ats:
            caps |= uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    cmd.data_len = len(data)
    cmd.out_data_type = data_type
    cmd.out_max_pasid_log2 = dev.pasid_bits
    cmd.out_capabilities = caps
