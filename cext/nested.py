"""Python face of the nested (2-D) walk and IOTLB (cext/nested.c).

One :class:`NestedDomain` per nested HWPT: a guest-owned stage 1 (VT-d first
stage, or an SMMUv3 vSTE -> CD table -> VMSAv8-64 4 KiB tables) whose every
table pointer and output address goes through stage 2 (a
:class:`cext.pagetable.PageTable`, the nest parent; ``None`` = identity),
with an IOTLB whose stale entries are served until the right invalidation.
Stage-2 output addresses are read and written through a :class:`Memory`:
``Memory.local(buf)`` for a buffer of this process (tests),
``Memory.process({tag: pid})`` for client processes (process_vm_readv/writev,
the owner tag in bits 57 up as core/iommufd/hwpt.py tags them).

Faults raise :class:`NestFault` (an ``OSError`` with ``errno`` EFAULT,
EACCES or EAGAIN) carrying ``stage`` (1 or 2), ``reason`` (``F_*``),
``level``, ``cls`` (SMMU event class), ``iova`` and ``addr`` (the IOVA for
stage-1 faults, the GPA for stage-2 faults). Format facts and fault rules:
../shared/reference/nesting.md §2.3-§2.6, §3.3-§3.6, §5 (cited in nested.h).
Not thread-safe.
"""
import errno as _errno
import os
import weakref
from collections import namedtuple

from cext._native import ffi, lib

FMT_VTD = lib.IOFS_NEST_FMT_VTD
FMT_SMMU = lib.IOFS_NEST_FMT_SMMU
VTD_SRE = lib.IOFS_NEST_VTD_SRE
VTD_EAFE = lib.IOFS_NEST_VTD_EAFE
VTD_WPE = lib.IOFS_NEST_VTD_WPE
READ = lib.IOFS_NEST_READ
WRITE = lib.IOFS_NEST_WRITE
PRIV = lib.IOFS_NEST_PRIV
EXEC = lib.IOFS_NEST_EXEC
NO_PASID = lib.IOFS_NEST_NO_PASID
ANY_ASID = lib.IOFS_NEST_ANY_ASID
SMMU_RIL = lib.IOFS_NEST_SMMU_RIL
SMMU_ASID16 = lib.IOFS_NEST_SMMU_ASID16
SMMU_DS = lib.IOFS_NEST_SMMU_DS
SMMU_ATS = lib.IOFS_NEST_SMMU_ATS
SMMU_SSID = lib.IOFS_NEST_SMMU_SSID

REASONS = {
    lib.IOFS_NEST_F_TRANSLATION: "translation",
    lib.IOFS_NEST_F_PERMISSION: "permission",
    lib.IOFS_NEST_F_RESERVED: "reserved",
    lib.IOFS_NEST_F_NON_CANONICAL: "non-canonical",
    lib.IOFS_NEST_F_ADDR_SIZE: "address-size",
    lib.IOFS_NEST_F_ACCESS_FLAG: "access-flag",
    lib.IOFS_NEST_F_BAD_STE: "bad-ste",
    lib.IOFS_NEST_F_BAD_CD: "bad-cd",
    lib.IOFS_NEST_F_BAD_SSID: "bad-substreamid",
    lib.IOFS_NEST_F_S2_WALK: "s2-walk",
    lib.IOFS_NEST_F_S2_OUTPUT: "s2-output",
    lib.IOFS_NEST_F_MEMORY: "memory",
    lib.IOFS_NEST_F_RACE: "ad-race",
}
F_TRANSLATION = lib.IOFS_NEST_F_TRANSLATION
F_PERMISSION = lib.IOFS_NEST_F_PERMISSION
F_RESERVED = lib.IOFS_NEST_F_RESERVED
F_NON_CANONICAL = lib.IOFS_NEST_F_NON_CANONICAL
F_ADDR_SIZE = lib.IOFS_NEST_F_ADDR_SIZE
F_ACCESS_FLAG = lib.IOFS_NEST_F_ACCESS_FLAG
F_BAD_STE = lib.IOFS_NEST_F_BAD_STE
F_BAD_CD = lib.IOFS_NEST_F_BAD_CD
F_BAD_SUBSTREAMID = lib.IOFS_NEST_F_BAD_SSID
F_S2_WALK = lib.IOFS_NEST_F_S2_WALK
F_S2_OUTPUT = lib.IOFS_NEST_F_S2_OUTPUT
F_MEMORY = lib.IOFS_NEST_F_MEMORY
F_RACE = lib.IOFS_NEST_F_RACE

Result = namedtuple("Result", "out gpa page_size s1_size perms hit asid s1_level")

_STATS = ("hits", "misses", "walks", "fills", "evictions", "inv_calls", "inv_entries",
          "cd_inv_entries", "entries", "capacity", "cd_entries", "faults", "ad_writes",
          "cas_retries")


class NestFault(OSError):
    """A nested translation fault (see the module docstring)."""

    def __init__(self, f):
        err = -f.err if f.err else _errno.EFAULT
        self.stage = f.stage
        self.reason = f.reason
        self.reason_name = REASONS.get(f.reason, str(f.reason))
        self.level = f.level
        self.cls = f.cls
        self.access = f.access
        self.iova = f.iova
        self.addr = f.addr
        super().__init__(err, f"stage {f.stage} {self.reason_name} fault at "
                              f"{f.addr:#x} (IOVA {f.iova:#x}, level {f.level})")


def smmu_event(fault, sid, pasid=NO_PASID):
    """The 4 dwords of the SMMUv3 event record (ref §3.7) for a
    :class:`NestFault` of an SMMU domain, StreamID = ``sid``."""
    f = ffi.new("struct iofs_nest_fault *")
    f.stage, f.reason, f.err = fault.stage, fault.reason, -fault.errno
    f.level, f.cls, f.access, f.iova, f.addr = (fault.level, fault.cls, fault.access,
                                                 fault.iova, fault.addr)
    evt = ffi.new("uint64_t[4]")
    _check(lib.iofs_nest_smmu_event(f, sid, pasid, evt), "smmu_event")
    return list(evt)


class Memory:
    """Where stage-2 output addresses point (struct iofs_nest_mem)."""

    def __init__(self, cdata, keep=None):
        self.c = cdata
        self._keep = keep

    @classmethod
    def local(cls, buf, origin=None, size=None):
        """``buf``: a cffi ``uint8_t[]`` (or anything ``ffi.from_buffer``
        takes; a pointer needs ``size``). HVA ``a`` is ``buf[a - origin]``;
        origin defaults to the buffer's own address (so HVAs are real
        pointers)."""
        if not isinstance(buf, ffi.CData):
            buf = ffi.from_buffer(buf)
        if size is None and ffi.typeof(buf).kind == "pointer":
            raise ValueError("Memory.local: give size for a pointer")
        m = ffi.new("struct iofs_nest_mem *")
        m.kind = lib.IOFS_NEST_MEM_LOCAL
        m.local = ffi.cast("uint8_t *", buf)
        m.origin = int(ffi.cast("uintptr_t", buf)) if origin is None else origin
        m.size = ffi.sizeof(buf) if size is None else size
        return cls(m, keep=buf)

    @classmethod
    def process(cls, pids, tag_shift=57):
        """``pids``: ``{tag: pid}`` (tag 0 = untagged addresses)."""
        m = ffi.new("struct iofs_nest_mem *")
        m.kind = lib.IOFS_NEST_MEM_PROC
        m.tag_shift = tag_shift
        for tag, pid in pids.items():
            m.pids[tag] = pid
        return cls(m)

    def read64(self, a):
        v = ffi.new("uint64_t *")
        rc = lib.iofs_nest_mem_read64(self.c, a, v)
        if rc:
            raise OSError(-rc, f"read at {a:#x}")
        return v[0]

    def cas64(self, a, old, new):
        """True if written, False if the word was not ``old``."""
        rc = lib.iofs_nest_mem_cas64(self.c, a, old, new, ffi.NULL)
        if rc < 0:
            raise OSError(-rc, f"cas at {a:#x}")
        return bool(rc)


def _check(rc, what):
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


class NestedDomain:
    """A nested domain; build with :meth:`vtd` or :meth:`smmu`.

    ``s2``: the parent :class:`~cext.pagetable.PageTable` (kept alive here)
    or None; ``mem``: a :class:`Memory`; ``capacity``: IOTLB entries (4 KiB
    each; 0 disables caching)."""

    def __init__(self, cfg, s2, mem, capacity=4096):
        self._cfg = cfg
        self._s2 = s2
        self.mem = mem
        d = lib.iofs_nest_new(cfg, s2.cdata if s2 is not None else ffi.NULL, mem.c, capacity)
        if d == ffi.NULL:
            err = ffi.errno or _errno.ENOMEM
            raise OSError(err, f"nested domain: {os.strerror(err)}")
        self._d = d
        self._fin = weakref.finalize(self, lib.iofs_nest_free, d)
        self._res = ffi.new("struct iofs_nest_result *")
        self._fault = ffi.new("struct iofs_nest_fault *")
        self._segs = ffi.new("struct iofs_seg[]", 64)

    @classmethod
    def vtd(cls, pgtbl_addr, *, s2=None, mem, addr_width=48, flags=0, fs1gp=True, haw=52,
            capacity=4096):
        """VT-d first stage: the iommu_hwpt_vtd_s1 fields (ref §2.3)."""
        c = ffi.new("struct iofs_nest_cfg *")
        c.format = FMT_VTD
        c.pgtbl_addr = pgtbl_addr
        c.addr_width = addr_width
        c.vtd_flags = flags
        c.fs1gp = 1 if fs1gp else 0
        c.haw = haw
        return cls(c, s2, mem, capacity)

    @classmethod
    def smmu(cls, ste, *, s2=None, mem, oas=48, httu=False, capacity=4096):
        """SMMUv3: the vSTE dwords (iommu_hwpt_arm_smmuv3, ref §3.3)."""
        c = ffi.new("struct iofs_nest_cfg *")
        c.format = FMT_SMMU
        c.ste[0], c.ste[1] = ste
        c.haw = oas
        c.smmu_httu = 1 if httu else 0
        return cls(c, s2, mem, capacity)

    # -- lifetime -----------------------------------------------------------
    def close(self):
        self._fin()
        self._d = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _p(self):
        if self._d is None:
            raise ValueError("nested domain is closed")
        if self._s2 is not None and self._s2.closed:
            # the C domain holds the parent's pointer: never walk a freed table
            raise ValueError("the stage-2 page table of this nested domain is closed")
        return self._d

    @property
    def cdata(self):
        return self._p()

    # -- translation ----------------------------------------------------------
    def _result(self):
        r = self._res
        return Result(r.out, r.gpa, r.page_size, r.s1_size, r.perms, bool(r.hit), r.asid,
                      r.s1_level)

    def _fail(self, rc, what):
        if rc in (-_errno.EFAULT, -_errno.EACCES, -_errno.EAGAIN) and self._fault.stage:
            raise NestFault(self._fault)
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")

    def translate(self, iova, access=READ, pasid=NO_PASID):
        """The byte at ``iova`` through the IOTLB (a walk on a miss) ->
        :class:`Result`; raises :class:`NestFault`."""
        rc = lib.iofs_nest_translate(self._p(), pasid, iova, access, self._res, self._fault)
        if rc:
            self._fail(rc, "translate")
        return self._result()

    def walk(self, iova, access=READ, pasid=NO_PASID):
        """A fresh 2-D walk, IOTLB (and CD cache) neither read nor filled."""
        rc = lib.iofs_nest_walk(self._p(), pasid, iova, access, self._res, self._fault)
        if rc:
            self._fail(rc, "walk")
        return self._result()

    def translate_batch(self, iovas, access=READ, pasid=NO_PASID):
        """Output addresses of every IOVA; raises on the first fault."""
        n = len(iovas)
        src = ffi.new("uint64_t[]", list(iovas))
        out = ffi.new("uint64_t[]", n)
        got = lib.iofs_nest_translate_batch(self._p(), pasid, src, n, access, out, self._fault)
        if got < 0:
            _check(got, "translate_batch")
        if got < n:
            raise NestFault(self._fault)
        return list(out)

    def translate_range(self, iova, length, access=READ, pasid=NO_PASID, max_segs=64):
        """The DMA path: ``[(hva, len)]`` for ``[iova, iova+length)``."""
        segs = self._segs if max_segs <= 64 else ffi.new("struct iofs_seg[]", max_segs)
        rc = lib.iofs_nest_translate_range(self._p(), pasid, iova, length, access, segs,
                                           max_segs, self._fault)
        if rc < 0:
            self._fail(rc, "translate_range")
        return [(segs[i].addr, segs[i].len) for i in range(rc)]

    # -- invalidation (ref §5.2) ----------------------------------------------
    def inv_range(self, addr, length, pasid=None):
        """Entries overlapping ``[addr, addr+length)``: of ``pasid`` (an int,
        or NO_PASID), or of every PASID when ``pasid`` is None."""
        any_ = pasid is None
        return _check(lib.iofs_nest_inv_range(self._p(), 1 if any_ else 0,
                                              0 if any_ else pasid, addr, length), "inv_range")

    def inv_vtd(self, addr, npages, flags=0):
        """One iommu_hwpt_vtd_s1_invalidate entry (ref §2.6)."""
        return _check(lib.iofs_nest_inv_vtd(self._p(), addr, npages, flags), "inv_vtd")

    def inv_pasid(self, pasid):
        return _check(lib.iofs_nest_inv_pasid(self._p(), pasid), "inv_pasid")

    def inv_asid(self, asid):
        """SMMU TLBI_NH_ASID."""
        return _check(lib.iofs_nest_inv_asid(self._p(), asid), "inv_asid")

    def inv_va(self, addr, length, asid=ANY_ASID):
        """SMMU TLBI_NH_VA (asid) / TLBI_NH_VAA (ANY_ASID)."""
        return _check(lib.iofs_nest_inv_va(self._p(), asid, addr, length), "inv_va")

    def inv_all(self):
        return _check(lib.iofs_nest_inv_all(self._p()), "inv_all")

    def inv_cd(self, ssid=NO_PASID):
        """SMMU CFGI_CD."""
        return _check(lib.iofs_nest_inv_cd(self._p(), ssid), "inv_cd")

    def inv_cd_all(self):
        """SMMU CFGI_CD_ALL."""
        return _check(lib.iofs_nest_inv_cd_all(self._p()), "inv_cd_all")

    def smmu_cmd(self, cmd0, cmd1, caps=None):
        """One raw SMMUv3 invalidation command (ref §3.6); ``caps``:
        SMMU_* bits (default: all). Raises OSError(EIO) as the driver would."""
        c = ffi.new("uint64_t[2]", [cmd0, cmd1])
        if caps is None:
            caps = SMMU_RIL | SMMU_ASID16 | SMMU_DS | SMMU_ATS | SMMU_SSID
        return _check(lib.iofs_nest_smmu_cmd(self._p(), c, caps), "smmu_cmd")

    def s2_changed(self):
        """The parent changed (IOAS unmap / replace): drop everything."""
        return _check(lib.iofs_nest_s2_changed(self._p()), "s2_changed")

    def forget_dirty(self):
        """Stage-2 dirty bits were cleared: writes walk again."""
        return _check(lib.iofs_nest_forget_dirty(self._p()), "forget_dirty")

    # -- knobs and counters ---------------------------------------------------
    def set_capacity(self, capacity):
        _check(lib.iofs_nest_set_capacity(self._p(), capacity), "set_capacity")

    def set_s2(self, s2):
        """Replace stage 2 (None: identity); drops every cached translation.
        Allowed after the old parent was closed."""
        if self._d is None:
            raise ValueError("nested domain is closed")
        _check(lib.iofs_nest_set_s2(self._d, s2.cdata if s2 is not None else ffi.NULL),
               "set_s2")
        self._s2 = s2

    def set_mem(self, mem):
        _check(lib.iofs_nest_set_mem(self._p(), mem.c), "set_mem")
        self.mem = mem

    def stats(self):
        s = ffi.new("struct iofs_nest_stats *")
        lib.iofs_nest_stats(self._p(), s)
        return {k: getattr(s, k) for k in _STATS}

    def reset_stats(self):
        lib.iofs_nest_reset_stats(self._p())
