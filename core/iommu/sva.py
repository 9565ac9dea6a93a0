"""SVA bonds: a process address space shared with a device (seed 002).

The driver side binds a process's mm to a device and gets a handle
(``iommu_sva_bind_device(dev, mm)``), asks its PASID
(``iommu_sva_get_pasid``), and unbinds. The device then DMAs with that PASID
at IOVA = the process's virtual address: the IOMMU walks the CPU page tables,
so the permissions are the process's own (a write to a read-only page is a
permission fault) and there is no I/O page table to fill.

- One bond per (device, mm); binding again returns the same handle with one
  more user (every bind needs its unbind).
- PASIDs: the mm's global PASID for ENQCMD devices, the same on every device
  (seed 003); otherwise one from the device's own space.
- When the process exits the bond's driver gets an ``mm_exit`` event (seed
  002); DMA with the PASID fails from then on, and the driver must still
  unbind ("device driver should always call unbind() ... even if they got
  notified by mm_exit").
"""
import errno

from ..errors import DmaFault, UapiError
from ..mm.usermem import Owner, tgid_of, uid_of
from .pasid import space_of
from .routing import occupant

READ, WRITE = 1, 2   # page-table access bits, as in core.iommu.dma


class Mm:
    """A bound process address space: ``tgid``, ``uid``, ``owner`` (the
    usermem.Owner: pidfd, memory access), ``global_pasid`` (its PASID in the
    system-wide space while an ENQCMD device is bound, else None), ``bonds``
    (the live SvaBonds), ``exited``."""

    def __init__(self, tgid, uid):
        self.tgid = tgid
        self.uid = uid
        self.owner = Owner(tgid, uid)
        self.global_pasid = None
        self.bonds = set()
        self.exited = False


class SvaBond:
    """The ``iommu_sva`` handle: ``handle`` (its number, unique in the
    emulator), ``device``, ``mm``, ``pasid``, ``users`` (binds not yet
    unbound), ``driver`` (the core.iommu.driver.DriverFile that made it),
    ``dead`` (mm_exit happened)."""

    kind = "SVA"

    def __init__(self, handle, device, mm, pasid, driver):
        self.handle = handle
        self.device = device
        self.mm = mm
        self.pasid = pasid
        self.driver = driver
        self.users = 1
        self.dead = False

    @property
    def id(self):
        return self.handle

    def dma_pieces(self, iova, length, access):
        """Translate IOVA ``[iova, iova+length)`` (= virtual addresses of the
        mm) for ``access`` (READ/WRITE): ``[(owner, [(va, len)])]``.
        Raises core.errors.DmaFault: EFAULT unmapped, or the process exited
        (the PASID entry is torn down at mm_exit); EACCES not writable."""
        if self.dead:
            raise DmaFault(errno.EFAULT, iova)
        rc = self.mm.owner.vma_access(iova, length, access & WRITE)
        if rc < 0:
            raise DmaFault(-rc, iova)
        return [(self.mm.owner, [(iova, length)])]

    def __repr__(self):
        return f"<SvaBond {self.handle} {self.device.name} pasid {self.pasid} pid {self.mm.tgid}>"


class SvaTable:
    """Every bond and bound mm of one emulator (reference: seed 002)."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.mms = {}          # tgid -> Mm
        self.bonds = {}        # handle -> SvaBond

    def _new_handle(self):
        h = 1
        while h in self.bonds:
            h += 1
        return h

    def bind(self, driver, caller, pid):
        """Bind process ``pid`` (0: the caller's) to ``driver.device``.

        Returns the SvaBond. Errors: EOPNOTSUPP the device has no PASID (an
        mdev included); ESRCH no such process; EPERM the process belongs to
        another uid (root may bind any); ENOSPC no PASID left; EBUSY the
        PASID is already routed on the device (a PASID attachment, an mdev),
        or another driver file of the device made the bond already.
        Nothing changes on error.
        """
        device = driver.device
        space = space_of(self.emulator, device)
        tgid = caller.tgid if pid == 0 else tgid_of(pid)
        uid = caller.uid if pid == 0 else uid_of(tgid)
        if caller.uid not in (0, uid):
            raise UapiError(errno.EPERM, f"process {tgid} belongs to uid {uid}")
        mm = self.mms.get(tgid)
        if mm is not None and mm.exited:
            mm = None          # a new process reusing the pid
        if mm is not None:
            for bond in mm.bonds:
                if bond.device is device:
                    if bond.driver is not driver:
                        raise UapiError(errno.EBUSY, f"{bond!r} belongs to another driver file")
                    bond.users += 1
                    return bond
        new_mm = mm is None
        if new_mm:
            mm = Mm(tgid, uid)
        try:
            pasid = self._pasid_for(mm, device, space)
        except BaseException:
            if new_mm:
                mm.owner.close()
            raise
        bond = SvaBond(self._new_handle(), device, mm, pasid, driver)
        if new_mm:
            self.mms[tgid] = mm
            # mm_exit: the transport tells core when the pidfd turns readable.
            self.emulator.watch(mm.owner.pidfd, lambda: self.mm_exited(mm))
        mm.bonds.add(bond)
        self.bonds[bond.handle] = bond
        device.sva_bonds[pasid] = bond
        return bond

    def _pasid_for(self, mm, device, space):
        if device.enqcmd:
            if mm.global_pasid is None:
                pasid = space.alloc()
                if occupant(self.emulator, device, pasid, own_attachment=True) is not None:
                    space.free(pasid)
                    raise UapiError(errno.EBUSY, f"PASID {pasid} is routed on {device.name}")
                mm.global_pasid = pasid
                return pasid
            if occupant(self.emulator, device, mm.global_pasid, own_attachment=True) is not None:
                raise UapiError(errno.EBUSY, f"PASID {mm.global_pasid} is routed on {device.name}")
            return mm.global_pasid
        return alloc_unrouted(self.emulator, device, space)

    def unbind(self, bond):
        """Drop one user of ``bond``; the last one removes it, frees its
        PASID (the mm's global PASID with its last ENQCMD bond) and, with
        the mm's last bond, forgets the mm."""
        bond.users -= 1
        if bond.users > 0:
            return
        device, mm = bond.device, bond.mm
        del self.bonds[bond.handle]
        del device.sva_bonds[bond.pasid]
        mm.bonds.discard(bond)
        if device.enqcmd:
            if not any(b.device.enqcmd for b in mm.bonds):
                self.emulator.global_pasids.free(mm.global_pasid)
                mm.global_pasid = None
        else:
            space_of(self.emulator, device).free(bond.pasid)
        if not mm.bonds:
            if self.mms.get(mm.tgid) is mm:
                del self.mms[mm.tgid]
            self.emulator.unwatch(mm.owner.pidfd)
            mm.owner.close()

    def mm_exited(self, mm):
        """The process behind ``mm`` exited: every bond turns dead and its
        driver gets an mm_exit event (seed 002). Idempotent."""
        if mm.exited:
            return
        mm.exited = True
        for bond in sorted(mm.bonds, key=lambda b: b.handle):
            bond.dead = True
            bond.driver.mm_exit(bond)


def alloc_unrouted(emulator, device, space):
    """A PASID of ``space`` that nothing is routed at on ``device``'s RID
    (a PASID the user attached through VFIO, an mdev's default PASID): the
    ones skipped are given back. ENOSPC when none is left."""
    skipped = []
    try:
        while True:
            pasid = space.alloc()
            if occupant(emulator, device, pasid, own_attachment=True) is None:
                return pasid
            skipped.append(pasid)
    finally:
        for p in skipped:
            space.free(p)
