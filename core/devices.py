"""The emulator's live devices: what a topology device is while a mount runs.

The topology (core.topology) is configuration, frozen once loaded. A
:class:`LiveDevice` pairs one of its devices (``config``) with the state
the emulator keeps for it: the DEVICE object it is bound as (core.vfio.cdev,
core.iommufd.device), its failed DMAs (core.iommu.dma), the PASID space its driver
allocates from (core.iommu.pasid), its SVA bonds (core.iommu.sva) and its last page
request group index (core.iommu.dma). Reading any configuration attribute of a
LiveDevice reads the config's. The Emulator holds one per topology device,
plus the selftest's mock devices while they live, in its RID table.
"""
import json
import os
import tempfile
from dataclasses import fields

from .iommu.port import IommuPort
from .pci import FunctionOptions, PciDevice
from .pci.models import make_model

#: The size of the scratch image of a virtio-blk without ``disk`` (bytes).
SCRATCH_DISK_BYTES = 64 << 20


class LiveDevice:
    """A device at run time: ``config`` (a core.topology.Device; its fields
    read through), ``bound`` (the BoundDevice while bound to a context),
    ``fault_log`` (failed DMAs, newest last), ``pasids`` (the PasidSpace
    PASIDs are allocated from, made on first use), ``sva_bonds`` (PASID ->
    SvaBond), ``prg_next`` (the last page request group index used)."""

    def __init__(self, config):
        self.config = config
        # The DMA path reads these per request: plain attributes, not a
        # __getattr__ call each (the config never changes).
        for f in fields(config):
            setattr(self, f.name, getattr(config, f.name))
        self.is_mdev = config.is_mdev
        self.bound = None
        self.fault_log = []
        self.pasids = None
        self.sva_bonds = {}
        self.prg_next = 0
        self.pci = None          # the PciDevice while the VFIO node is open
        self.vfio_opens = 0
        self.watched_unmask = None   # (sink, fd) of a watched INTx unmask eventfd (core.vfio.pci)
        self.scratch = None      # path of a scratch disk image this device made

    def __getattr__(self, name):
        # Only for what the instance lacks: the config's methods.
        return getattr(self.config, name)

    def set_dev_pasid(self, pasid, hwpt):
        """The IOMMU driver's step of a PASID attach, replace (``hwpt``: the
        new HwptPaging) or detach (``hwpt`` None: the blocked domain), run
        after the core's checks (§8). May raise UapiError to refuse the
        change, which then leaves the old attachment in place. The emulated
        PCI IOMMU accepts every change; the selftest mock device overrides
        this (core.iommufd.selftest: PASID 1024)."""

    # -- the PCI function behind the VFIO node ---------------------------------

    def open_function(self, emulator):
        """An open of the VFIO node: the first one powers the function up (a
        fresh model and config space, as vfio-pci enables the device on its
        first open). Returns the PciDevice. Raises OSError if the model's
        disk image cannot be opened."""
        if self.pci is None:
            self.pci = PciDevice(self._make_model(), IommuPort(emulator, self), FunctionOptions(
                pcie=self.pcie, ats=self.ats, pri=self.pri, pasid_bits=self.pasid_bits))
        self.vfio_opens += 1
        return self.pci

    def close_function(self):
        """The last close of the VFIO node tears the function down (its
        interrupts, its model's files; vfio-device.md §6.4)."""
        self.vfio_opens -= 1
        if self.vfio_opens == 0 and self.pci is not None:
            pci, self.pci = self.pci, None
            pci.release()

    def _make_model(self):
        c = self.config
        if c.model != "virtio-blk":
            return make_model(c.model)
        disk = c.disk
        if disk is None:
            if self.scratch is None:
                fd, self.scratch = tempfile.mkstemp(prefix=f"iommufs-{c.vfio}-", suffix=".img")
                os.ftruncate(fd, SCRATCH_DISK_BYTES)
                os.close(fd)
            disk = self.scratch
        return make_model("virtio-blk", disk=disk, readonly=c.readonly)

    def shutdown(self):
        """Unmount: tear the function down and remove a scratch image."""
        if self.pci is not None:
            self.vfio_opens = 1
            self.close_function()
        if self.scratch is not None:
            try:
                os.unlink(self.scratch)
            except OSError:
                pass
            self.scratch = None

    def info(self):
        """The ``info`` document (DESIGN.md): a dict ready for JSON."""
        c = self.config
        d = {
            "name": c.name,
            "vfio": c.vfio,
            "rid": c.rid,
            "bdf": c.alias or (c.parent if c.is_mdev else c.name),
            "group": c.group,
            "group_members": list(c.group_members),
            "vendor": c.vendor,
            "device": c.device_id,
            "pasid_bits": c.pasid_bits,
            "pasid_exec": c.pasid_exec,
            "pasid_priv": c.pasid_priv,
            "pri": c.pri,
            "ats": c.ats,
            "enqcmd": c.enqcmd,
            "dirty_tracking": c.dirty_tracking,
            "address_width": c.iommu.address_width,
            "page_sizes": list(c.iommu.page_sizes),
            "faults": len(self.fault_log),
            "last_fault": self.fault_log[-1] if self.fault_log else None,
        }
        if c.is_mdev:
            d["parent"] = c.parent
            d["default_pasid"] = c.default_pasid
        # What the IOMMU routes for this device now (core.iommu.routing), for people
        # debugging a setup: the DEVICE id, the HWPT per RID/PASID, the bonds.
        idev = self.bound
        d["dev_id"] = idev.id if idev is not None else None
        d["attached"] = {} if idev is None else {
            ("rid" if p is None else f"pasid {p}"): h.id for p, h in sorted(
                idev.attachments.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}
        d["sva_bonds"] = [{"handle": b.handle, "pasid": b.pasid, "pid": b.mm.tgid, "mm_exited": b.dead}
                          for _, b in sorted(self.sva_bonds.items())]
        if self.pasids is not None:
            d["pasids_allocated"] = sorted(self.pasids.used)
        # The PCI function (core/pci): its model and, while the node is
        # open, the model's registers, queues and interrupt and DMA counts.
        d["sysfs"] = c.sysfs_name
        d["model"] = c.model
        d["class"] = c.class_code
        d["pcie"] = c.pcie
        if c.model == "virtio-blk":
            d["disk"] = c.disk or self.scratch
            d["readonly"] = c.readonly
        d["function"] = self.pci.state() if self.pci is not None else None
        return d

    def info_json(self):
        """:meth:`info` as the node's bytes."""
        return (json.dumps(self.info(), indent=1) + "\n").encode()

    def __repr__(self):
        return f"<LiveDevice {self.config.name}>"
