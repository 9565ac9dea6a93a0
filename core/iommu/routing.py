"""The IOMMU's routing: which translation a DMA with {RID, PASID} reaches.

The RFC's two halves (seed 001): /dev/iommu fills I/O page tables; the
device's driver "routes" its requests into one by telling the IOMMU what
TLPs the device emits. On the wire a request carries only a RID and maybe a
PASID, so the IOMMU cannot tell apart the devices behind a PCIe-to-PCI bridge
(they share the bridge's RID: a group) or an mdev from its parent (the parent's
RID plus the mdev's default PASID, seed 004). Routing is therefore by
{RID, PASID}, never by device:

- a PCI function's attachment at ``pasid`` (None = the RID) occupies that key
  of its RID; an mdev's RID attachment occupies its parent's RID at the mdev's
  default PASID;
- an SVA bond occupies its PASID on the device's RID (core.iommu.sva).

A route names the translation (a paging HWPT or an SVA bond) and the DEVICE
object the IOMMU reports I/O page faults against (seed 004: "the fault
handler just needs to figure out iommu_dev according to {rid, pasid}").
"""

RID = None  # the key of DMA without PASID


class Route:
    """``target``: what translates (HwptPaging or SvaBond); ``idev``: the
    BoundDevice whose attachment it is (None for an SVA bond);
    ``device``: the topology device that owns the key."""

    __slots__ = ("target", "idev", "device")

    def __init__(self, target, idev, device):
        self.target = target
        self.idev = idev
        self.device = device

    def __repr__(self):
        return f"<Route {self.device.name} -> {self.target!r}>"


def wire_pasid(device, pasid):
    """The PASID DMA carries for ``device``'s attachment at ``pasid``
    (None = its RID): an mdev's RID is its parent's RID + default PASID."""
    if device.is_mdev and pasid is RID:
        return device.default_pasid
    return pasid


def routes_of(emulator, rid):
    """Every route of ``rid``: a list of ``(wire_pasid, Route)``, in
    topology order (so the first-declared member of a group owns a shared
    key in fault reports)."""
    return [kr for dev in emulator.by_rid.get(rid, ()) for kr in routes_of_device(dev)]


def find(emulator, rid, pasid):
    """The Route DMA with ``rid`` and ``pasid`` (None: no PASID) reaches, or
    None when nothing is attached at that key."""
    for dev in emulator.by_rid.get(rid, ()):
        idev = dev.bound
        if idev is not None:
            if dev.is_mdev:
                if pasid == dev.default_pasid and RID in idev.attachments:
                    return Route(idev.attachments[RID], idev, dev)
            else:
                hwpt = idev.attachments.get(pasid)
                if hwpt is not None:
                    return Route(hwpt, idev, dev)
        if pasid is not RID:
            bond = dev.sva_bonds.get(pasid)
            if bond is not None:
                return Route(bond, None, dev)
    return None


def occupant(emulator, device, pasid, own_attachment=False):
    """Who holds the key ``device``'s attachment at ``pasid`` takes on the
    wire: a Route, or None. The device's own attachment at ``pasid`` counts
    only with ``own_attachment`` (an SVA bond or a PASID allocation must
    avoid it; an attach replaces it). Group peers hold the same keys by
    construction and are returned too: the caller tells them apart (they
    must share the HWPT rather than be refused)."""
    key = wire_pasid(device, pasid)
    for dev in emulator.by_rid.get(device.rid, ()):
        for k, route in routes_of_device(dev):
            if k != key:
                continue
            if dev is device and route.idev is not None and not own_attachment:
                continue
            return route
    return None


def routes_of_device(dev):
    """``(wire_pasid, Route)`` pairs of one device (attachments and bonds)."""
    out = []
    idev = dev.bound
    if idev is not None:
        for pasid, hwpt in idev.attachments.items():
            out.append((wire_pasid(dev, pasid), Route(hwpt, idev, dev)))
    for pasid, bond in dev.sva_bonds.items():
        out.append((pasid, Route(bond, None, dev)))
    return out
