"""Pure-Python reference of the nested (2-D) walks of cext/nested.c.

Written from ../shared/reference/nesting.md ("ref"), not from the C: VT-d
first stage (ref §2.3, §2.4), the 2-D walk and its fault classes (ref §2.5,
§3.5), SMMUv3 vSTE / CD table / CD (ref §3.3, §3.4) and VMSAv8-64 4 KiB
stage 1 (ref §3.5). Its constants are written out here, so a disagreement
between the header and this file shows up in the tests.

No IOTLB: every call is a fresh walk (the C ``iofs_nest_walk``). A/D (EA)
write-back is done the same way the C does it (only after the whole
translation succeeded, compare-and-set per entry), so the two can be held
against each other on the resulting guest memory too.

Interfaces:

- ``mem``: ``read64(hva) -> int | None`` and ``cas64(hva, old, new) -> bool``
  (:class:`BufferMem` over a cffi buffer is provided);
- ``s2``: ``None`` (identity) or a :class:`cext.pagetable.PageTable`, read
  with :func:`cext.refwalk.walk` (no stage-2 A/D bits are set here).

:func:`walk` returns ``("ok", Result)`` or ``("fault", Fault)``.
"""
import errno
from collections import namedtuple

from cext import refwalk

FMT_VTD, FMT_SMMU = 1, 2
VTD_SRE, VTD_EAFE, VTD_WPE = 1, 2, 4
READ, WRITE, PRIV, EXEC = 1, 2, 4, 8
NO_PASID = 0xFFFF_FFFF

F_TRANSLATION, F_PERMISSION, F_RESERVED, F_NON_CANONICAL = 1, 2, 3, 4
F_ADDR_SIZE, F_ACCESS_FLAG, F_BAD_STE, F_BAD_CD, F_BAD_SSID = 5, 6, 7, 8, 9
F_S2_WALK, F_S2_OUTPUT, F_MEMORY, F_RACE = 10, 11, 12, 13
CLASS_CD, CLASS_TT, CLASS_IN = 0, 1, 2

U64 = (1 << 64) - 1
S2_IDENTITY_SIZE = 1 << 63

Result = namedtuple("Result", "out gpa page_size s1_size perms asid s1_level")
Fault = namedtuple("Fault", "stage reason err level cls addr")


def bits(hi, lo):
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


class BufferMem:
    """Guest memory = a cffi ``uint8_t[]`` buffer; HVA a is buf[a - origin]."""

    def __init__(self, buf, origin, size):
        from cext._native import ffi
        self.ffi = ffi
        self.buf, self.origin, self.size = buf, origin, size

    def _off(self, a):
        off = a - self.origin
        if a < self.origin or off + 8 > self.size:
            return None
        return off

    def read64(self, a):
        off = self._off(a)
        if off is None:
            return None
        return int.from_bytes(self.ffi.buffer(self.buf + off, 8)[:], "little")

    def cas64(self, a, old, new):
        off = self._off(a)
        if off is None:
            return None
        if self.read64(a) != old:
            return False
        self.ffi.buffer(self.buf + off, 8)[:] = new.to_bytes(8, "little")
        return True


class _Abort(Exception):
    def __init__(self, fault):
        self.fault = fault


class _Walk:
    def __init__(self, cfg, s2, mem, pasid, iova, access):
        self.cfg, self.s2pt, self.mem = cfg, s2, mem
        self.pasid, self.iova, self.access = pasid, iova, access
        self.upd = []

    def fail(self, stage, reason, err, level, cls, addr):
        raise _Abort(Fault(stage, reason, err, level, cls, addr))

    # stage 2 -----------------------------------------------------------
    def s2(self, gpa, acc):
        """-> (hva, size) or -errno."""
        if self.s2pt is None:
            return gpa, S2_IDENTITY_SIZE
        w = refwalk.walk(self.s2pt, gpa)
        if w is None:
            return -errno.EFAULT
        addr, prot, _flags, size = w
        if acc & ~prot & 3:
            return -errno.EACCES
        return addr, size

    def s2_perms(self, gpa):
        if self.s2pt is None:
            return READ | WRITE
        w = refwalk.walk(self.s2pt, gpa)
        return 0 if w is None else w[1]

    def load(self, gpa, level, cls):
        t = self.s2(gpa, READ)
        if isinstance(t, int):
            self.fail(2, F_S2_WALK, t, level, cls, gpa)
        v = self.mem.read64(t[0])
        if v is None:
            self.fail(2, F_MEMORY, -errno.EFAULT, level, cls, gpa)
        return t[0], v

    def note(self, gpa, hva, old, new, level):
        if old != new:
            self.upd.append((gpa, old, new, level))

    def finish(self, gpa, s1_size, s1_perms, level, asid):
        acc = self.access & (READ | WRITE)
        t = self.s2(gpa, acc)
        if isinstance(t, int):
            self.fail(2, F_S2_OUTPUT, t, level, CLASS_IN, gpa)
        hva, s2size = t
        p2 = self.s2_perms(gpa)
        perms = s1_perms
        if not p2 & READ:
            perms &= ~(READ | EXEC)
        if not p2 & WRITE:
            perms &= ~WRITE
        return Result(hva, gpa, min(s1_size, s2size), s1_size, perms, asid, level)

    def write_back(self):
        for gpa, old, new, level in self.upd:
            t = self.s2(gpa, WRITE)
            if isinstance(t, int):
                self.fail(2, F_S2_WALK, t, level, CLASS_TT, gpa)
            ok = self.mem.cas64(t[0], old, new)
            if ok is None:
                self.fail(2, F_MEMORY, -errno.EFAULT, level, CLASS_TT, gpa)
            if not ok:
                return False
        return True

    # VT-d first stage (ref §2.4) ---------------------------------------
    def vtd(self):
        c = self.cfg
        aw = c["addr_width"]
        levels = 5 if aw == 57 else 4
        top = levels - 1
        iova, acc, flags = self.iova, self.access, c.get("vtd_flags", 0)
        priv, write = bool(acc & PRIV), bool(acc & WRITE)
        # canonical: bits [63:aw-1] all equal
        hi = iova >> (aw - 1)
        if hi not in (0, U64 >> (aw - 1)):
            self.fail(1, F_NON_CANONICAL, -errno.EFAULT, top, CLASS_IN, iova)
        if priv and not flags & VTD_SRE:
            self.fail(1, F_PERMISSION, -errno.EACCES, top, CLASS_IN, iova)
        haw = c["haw"]
        amask = bits(haw - 1, 12)
        rsv = bits(51, haw) if haw < 52 else 0
        table = c["pgtbl_addr"] & ~0xFFF & U64
        if table & ~amask:
            self.fail(1, F_RESERVED, -errno.EFAULT, top, CLASS_TT, iova)
        amark = (1 << 5) | ((1 << 10) if flags & VTD_EAFE else 0)
        rw = us = True
        xd = False
        for level in range(top, -1, -1):
            shift = 12 + 9 * level
            egpa = table + 8 * ((iova >> shift) & 511)
            hva, e = self.load(egpa, level, CLASS_TT)
            if not e & 1:
                self.fail(1, F_TRANSLATION, -errno.EFAULT, level, CLASS_TT, iova)
            ps = level >= 1 and bool(e & 0x80)
            bad = bool(e & rsv)
            if ps and level >= 3:
                bad = True
            if ps and level == 2 and not c.get("fs1gp", 1):
                bad = True
            if ps and e & bits(shift - 1, 13):
                bad = True
            if bad:
                self.fail(1, F_RESERVED, -errno.EFAULT, level, CLASS_TT, iova)
            rw = rw and bool(e & 2)
            us = us and bool(e & 4)
            xd = xd or bool(e >> 63)
            leaf = level == 0 or ps
            ne = e | amark | ((1 << 6) if leaf and write else 0)
            self.note(egpa, hva, e, ne, level)
            if not leaf:
                table = e & amask
                continue
            size = 1 << shift
            gpa = (e & amask & ~(size - 1)) | (iova & (size - 1))
            if priv:
                perms = READ | (WRITE if rw or not flags & VTD_WPE else 0)
            else:
                perms = (READ | (WRITE if rw else 0)) if us else 0
            if perms and not xd:
                perms |= EXEC
            need = acc & (READ | WRITE | EXEC)
            if perms & need != need:
                self.fail(1, F_PERMISSION, -errno.EACCES, level, CLASS_IN, iova)
            return self.finish(gpa, size, perms, level, 0)

    # SMMUv3 (ref §3.3-§3.5) --------------------------------------------
    def smmu_cd(self):
        """-> (cd0, cd1), or None for "bypass stage 1"."""
        ste0, ste1 = self.cfg["ste"]
        iova = self.iova
        bad = lambda reason: self.fail(1, reason, -errno.EFAULT, 0, CLASS_CD, iova)  # noqa: E731
        if not ste0 & 1:
            bad(F_BAD_STE)
        config = (ste0 >> 1) & 7
        if config == 4:
            return None
        if config != 5:
            bad(F_BAD_STE)
        s1fmt, cdmax = (ste0 >> 4) & 3, ste0 >> 59
        ctx = ste0 & bits(51, 6)
        if self.pasid == NO_PASID:
            if cdmax == 0:
                ssid = 0
            else:
                dss = ste1 & 3
                if dss == 1:
                    return None
                if dss == 0:
                    bad(F_BAD_SSID)
                if dss == 3:
                    bad(F_BAD_STE)
                ssid = 0
        else:
            if cdmax == 0 or self.pasid >= 1 << cdmax:
                bad(F_BAD_SSID)
            ssid = self.pasid
        if cdmax == 0 or s1fmt == 0:
            cdgpa = ctx + 64 * ssid
        elif s1fmt in (1, 2):
            split = 6 if s1fmt == 1 else 10
            _, l1 = self.load(ctx + 8 * (ssid >> split), 0, CLASS_CD)
            if not l1 & 1:
                bad(F_BAD_SSID)
            cdgpa = (l1 & bits(51, 12)) + 64 * (ssid & ((1 << split) - 1))
        else:
            bad(F_BAD_STE)
        _, cd0 = self.load(cdgpa, 0, CLASS_CD)
        _, cd1 = self.load(cdgpa + 8, 0, CLASS_CD)
        t0sz = cd0 & 0x3F
        if (not cd0 >> 31 & 1 or not cd0 >> 41 & 1 or cd0 >> 15 & 1 or (cd0 >> 6) & 3
                or not 16 <= t0sz <= 39 or (cd0 >> 32) & 7 > 6):
            bad(F_BAD_CD)
        return cd0, cd1

    def smmu(self, cd0, cd1):
        c, acc, iova = self.cfg, self.access, self.iova
        priv, write = bool(acc & PRIV), bool(acc & WRITE)
        ias = 64 - (cd0 & 0x3F)
        oas = min([32, 36, 40, 42, 44, 48, 52][(cd0 >> 32) & 7], c["haw"])
        va = iova & bits(55, 0) if cd0 >> 38 & 1 else iova
        start = 0 if ias > 39 else 1 if ias > 30 else 2
        if va >> ias or cd0 >> 14 & 1:
            self.fail(1, F_TRANSLATION, -errno.EFAULT, start, CLASS_TT, iova)
        httu = bool(c.get("smmu_httu", 0))
        ha, hd = httu and bool(cd0 >> 43 & 1), httu and bool(cd0 >> 42 & 1)
        top_bytes = 8 << (ias - (12 + 9 * (3 - start)))
        table = cd1 & bits(51, 4) & ~(top_bytes - 1)
        if table >> oas:
            self.fail(1, F_ADDR_SIZE, -errno.EFAULT, start, CLASS_TT, iova)
        apt_ro = apt_nouser = xnt = pxnt = False
        for level in range(start, 4):
            shift = 12 + 9 * (3 - level)
            egpa = table + 8 * ((va >> shift) & 511)
            hva, e = self.load(egpa, level, CLASS_TT)
            if not e & 1:
                self.fail(1, F_TRANSLATION, -errno.EFAULT, level, CLASS_TT, iova)
            if not e & 2 and level in (0, 3):
                self.fail(1, F_TRANSLATION, -errno.EFAULT, level, CLASS_TT, iova)
            if e & 2 and level < 3:
                nxt = e & bits(47, 12)
                if nxt >> oas:
                    self.fail(1, F_ADDR_SIZE, -errno.EFAULT, level, CLASS_TT, iova)
                apt_ro |= bool(e >> 62 & 1)
                apt_nouser |= bool(e >> 61 & 1)
                xnt |= bool(e >> 60 & 1)
                pxnt |= bool(e >> 59 & 1)
                table = nxt
                continue
            size = 1 << shift
            oa = e & bits(47, 12) & ~(size - 1)
            if oa >> oas:
                self.fail(1, F_ADDR_SIZE, -errno.EFAULT, level, CLASS_TT, iova)
            ne = e
            if not e & (1 << 10):
                if ha:
                    ne |= 1 << 10
                elif not cd0 >> 35 & 1:
                    self.fail(1, F_ACCESS_FLAG, -errno.EFAULT, level, CLASS_TT, iova)
            ap2 = bool(e & (1 << 7))
            clean = hd and bool(e >> 51 & 1) and ap2 and not apt_ro
            ro = apt_ro or (ap2 and not clean)
            user_ok = bool(e & (1 << 6)) and not apt_nouser
            perms = 0
            if priv or user_ok:
                perms = READ | (0 if ro else WRITE)
                xn = (bool(e >> 53 & 1) or pxnt) if priv else (bool(e >> 54 & 1) or xnt)
                if cd0 >> 36 & 1 and not ro:
                    xn = True
                if not xn:
                    perms |= EXEC
            need = acc & (READ | WRITE | EXEC)
            if perms & need != need:
                self.fail(1, F_PERMISSION, -errno.EACCES, level, CLASS_IN, iova)
            if write and clean:
                ne &= ~(1 << 7)
            self.note(egpa, hva, e, ne, level)
            return self.finish(oa | (va & (size - 1)), size, perms, level, cd0 >> 48)


def walk(cfg, s2, mem, pasid, iova, access, retries=8):
    """One fresh nested walk with A/D write-back.

    ``cfg``: dict with ``format`` and the fields of struct iofs_nest_cfg
    (``pgtbl_addr``, ``addr_width``, ``vtd_flags``, ``fs1gp``, ``haw``,
    ``ste``, ``smmu_httu``). Returns ``("ok", Result)`` or
    ``("fault", Fault)``."""
    for _ in range(retries):
        w = _Walk(cfg, s2, mem, pasid, iova, access)
        try:
            if cfg["format"] == FMT_VTD:
                r = w.vtd()
            else:
                cd = w.smmu_cd()
                if cd is None:
                    r = w.finish(iova, S2_IDENTITY_SIZE, READ | WRITE | EXEC, 0, 0)
                else:
                    r = w.smmu(*cd)
            if w.write_back():
                return "ok", r
        except _Abort as a:
            return "fault", a.fault
    return "fault", Fault(1, F_RACE, -errno.EAGAIN, 0, CLASS_TT, iova)
