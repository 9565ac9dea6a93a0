"""Property test: the IOAS's interval logic against a naive model (reference §7).

The model keeps plain lists of intervals and re-implements the kernel's
rules the slow, obvious way: automatic IOVA by walking every allowed window
and every hole from the start (alignment = roundup_pow_of_two(length) lowered
to the source address's alignment, capped at 2 MiB, start rounded up and the
page offset OR-ed in, ``aligned >= last`` refused), fixed IOVA, unmap with full
containment and no rollback, COPY across contiguous areas, reserved/allowed
ranges and the iova_alignment of domains and HUGE_PAGES, and the area split
of VFIO type1 unmaps (§11.4). Every operation must give the same errno or the
same IOVA, and the same state afterwards.

Memory is never touched: pin-time checks are replaced by a no-op, so
mappings with a domain behave as if the memory were there.
"""
import errno
import os
import threading

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import core.iommufd.ioas as ioas_mod
from core.caller import Caller
from core.iommufd.context import Context
from core.errors import UapiError
from core.iommufd.ioas import PROT_READ, PROT_WRITE, Ioas

U64_MAX = (1 << 64) - 1
PAGE = 4096
HPAGE = 2 << 20


# -- the model -----------------------------------------------------------------------------------
def m_merge(ranges):
    out = []
    for s, l in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], l))
        else:
            out.append((s, l))
    return out


def m_holes(used, lo, hi):
    out, cur = [], lo
    for s, l in m_merge(used):
        if l < cur:
            continue
        if s > hi:
            break
        if s > cur:
            out.append((cur, s - 1))
        cur = l + 1
    if cur <= hi:
        out.append((cur, hi))
    return out


def m_meets(ranges, s, l):
    return any(rs <= l and s <= rl for rs, rl in ranges)


def m_fit(start, last, length, align, off):
    a = start + align - 1
    if a > U64_MAX:
        return None
    a = (a // align * align) | off
    if a >= last or last - a < length - 1:
        return None
    return a


class Model:
    def __init__(self):
        self.areas = {}        # iova -> (length, user_va, prot, writable)
        self.reserved = {}     # key -> [(s, l)]
        self.allowed = []
        self.domains = []      # [(page_size, key)]
        self.no_huge = False
        self.align = 1

    def area_ranges(self):
        return [(i, i + a[0] - 1) for i, a in self.areas.items()]

    def reserved_ranges(self):
        return [r for rs in self.reserved.values() for r in rs]

    def alloc(self, length, addr):
        if length == 0 or length >= U64_MAX // 2:
            return errno.EOVERFLOW
        align = 1
        while align < length:
            align *= 2
        if addr:
            align = min(align, addr & -addr)
        align = min(align, HPAGE)
        if align < self.align:
            return errno.EINVAL
        off = addr % PAGE
        lo, hi = PAGE, U64_MAX - PAGE
        if self.allowed:
            windows = [(max(s, lo), min(l, hi)) for s, l in m_merge(self.allowed) if max(s, lo) <= min(l, hi)]
        else:
            windows = [(lo, hi)]
        used = self.area_ranges() + self.reserved_ranges()
        for ws, wl in windows:
            start = m_fit(ws, wl, length, align, off)
            if start is None:
                continue
            for hs, hl in m_holes(used, start, wl):
                got = m_fit(hs, hl, length, align, off)
                if got is not None:
                    return ("iova", got)
        return errno.ENOSPC

    def map_pieces(self, pieces, length, iova, fixed, prot):
        """pieces: [(user_va, length, writable)]; returns errno or ("iova", x)."""
        a = self.align
        if length % a or length == 0:
            return errno.EINVAL
        if fixed:
            if iova % a:
                return errno.EINVAL
            last = iova + length - 1
            if last > U64_MAX:
                return errno.EOVERFLOW
            if m_meets(self.reserved_ranges(), iova, last):
                return errno.EINVAL
            if m_meets(self.area_ranges(), iova, last):
                return errno.EEXIST
        else:
            got = self.alloc(length, pieces[0][0])
            if isinstance(got, int):
                return got
            iova = got[1]
        for va, n, writable in pieces:
            if prot & PROT_WRITE and not writable:
                return errno.EPERM
            if (va % PAGE) % a:
                return errno.EINVAL
        cur = iova
        for va, n, writable in pieces:
            self.areas[cur] = (n, va, prot, writable)
            cur += n
        return ("iova", iova)

    def map_user(self, va, length, iova, prot, fixed):
        if va + length > U64_MAX:
            return errno.EOVERFLOW
        if length == 0 or length > U64_MAX - PAGE:
            return errno.EINVAL
        return self.map_pieces([(va, length, bool(prot & PROT_WRITE))], length, iova, fixed, prot)

    def get_pages(self, iova, length):
        if length == 0:
            return errno.EINVAL
        last = iova + length - 1
        if last > U64_MAX:
            return errno.EOVERFLOW
        pieces, cur = [], iova
        while True:
            hit = [(i, a) for i, a in self.areas.items() if i <= cur <= i + a[0] - 1]
            if not hit:
                return errno.ENOENT
            i, (n, va, prot, writable) = hit[0]
            end = min(last, i + n - 1)
            pieces.append((va + cur - i, end - cur + 1, writable))
            if end == last:
                return pieces
            cur = end + 1
            if cur not in self.areas:
                return errno.ENOENT

    def unmap(self, start, last):
        total = 0
        for i in sorted(self.areas):
            n = self.areas[i][0]
            if i + n - 1 < start or i > last:
                continue
            if i < start or i + n - 1 > last:
                return errno.ENOENT, total
            del self.areas[i]
            total += n
        return None, total

    def split(self, iova):
        """iopt_area_split: cut after ``iova``; errno or None."""
        hit = [i for i, a in self.areas.items() if i <= iova <= i + a[0] - 1]
        if not hit:
            return None
        i = hit[0]
        n, va, prot, writable = self.areas[i]
        if iova in (i, i + n - 1):
            return None
        off = iova + 1 - i
        if (iova + 1) % self.align or (va + off) % PAGE % self.align:
            return errno.EINVAL
        if self.domains and not self.no_huge:
            return errno.EINVAL
        self.areas[i] = (off, va, prot, writable)
        self.areas[iova + 1] = (n - off, va + off, prot, writable)
        return None

    def misaligned(self, align):
        return any(i % align or a[0] % align or (a[1] % PAGE) % align for i, a in self.areas.items())

    def recalc(self):
        new = PAGE if self.no_huge else 1
        for ps, _ in self.domains:
            new = max(new, ps)
        if new > self.align and self.misaligned(new):
            return errno.EADDRINUSE
        self.align = new
        return None

    def add_reserved(self, key, ranges):
        for s, l in ranges:
            if m_meets(self.area_ranges(), s, l) or m_meets(self.allowed, s, l):
                return errno.EADDRINUSE
        if ranges:
            self.reserved.setdefault(key, []).extend(ranges)
        return None

    def add_domain(self, ps, aperture, key):
        new = max(ps, self.align)
        if new > PAGE:
            return errno.EINVAL
        if new != self.align and self.misaligned(new):
            return errno.EADDRINUSE
        outside = []
        if aperture is not None:
            if aperture[0] > 0:
                outside.append((0, aperture[0] - 1))
            if aperture[1] < U64_MAX:
                outside.append((aperture[1] + 1, U64_MAX))
        err = self.add_reserved(key, outside)
        if err:
            return err
        self.domains.append((ps, key))
        self.align = new
        return None

    def free(self):
        return m_holes(self.area_ranges() + self.reserved_ranges(), 0, U64_MAX)


# -- the machine -------------------------------------------------------------------------------------
class Dom:
    """A domain that checks what the IOAS asks of it: maps never overlap, and
    an unmap removes a part of one earlier map (a split area is unmapped
    piece by piece, as a page table that splits its leaves allows)."""

    def __init__(self, page_size, aperture):
        self.page_size = page_size
        if aperture is not None:
            self.aperture = aperture
        self.maps = {}

    def map(self, iova, user_va, length, prot, huge, owner=None):
        assert not any(i <= iova + length - 1 and iova <= i + n - 1 for i, n in self.maps.items())
        self.maps[iova] = length

    def unmap(self, iova, length):
        start = max(i for i in self.maps if i <= iova)
        n = self.maps.pop(start)
        assert iova + length <= start + n
        if iova > start:
            self.maps[start] = iova - start
        if iova + length < start + n:
            self.maps[iova + length] = start + n - iova - length
        return length

    def mirrors(self, areas):
        """Same IOVA coverage as ``areas`` ({iova: (length, ...)}), each map
        being whole areas (it starts and ends on area boundaries)."""
        starts = set(areas)
        ends = {i + a[0] for i, a in areas.items()}
        return (m_merge([(i, i + n - 1) for i, n in self.maps.items()])
                == m_merge([(i, i + a[0] - 1) for i, a in areas.items()])
                and all(i in starts and i + n in ends for i, n in self.maps.items()))


IOVAS = st.one_of(
    st.sampled_from([0, 0x800, 0x1000, 0x1800, 0x2000, 0x10000, 0x1FF800, 0x200000, 1 << 31,
                     U64_MAX - 0x2FFF, U64_MAX - 0xFFF]),
    st.integers(0, 0x80000).map(lambda x: x & ~0xF),
    st.integers(0, 0x80000),
)
LENGTHS = st.one_of(
    st.sampled_from([1, 2, 0x10, 0x800, 0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x10000, 0x200000,
                     0x300000, 0x400000, 0x1000000, 1 << 62, 1 << 63]),
    st.integers(1, 0x20000).map(lambda x: x & ~0xF or 0x10),
    st.integers(1, 0x20000),
)
VAS = st.one_of(
    st.sampled_from([0, 0x10, 0x800, 0x1000, 0x1010, 0x3000, 0x7F0000200000, 0x7F0000201800,
                     0x7F0000400000, 0x40000000, 1 << 31, U64_MAX - 0xFFF]),
    st.integers(0, 1 << 47),
    st.integers(1, 1 << 20).map(lambda x: x << 21),  # 2 MiB aligned or better
)
PROTS = st.sampled_from([PROT_READ, PROT_WRITE, PROT_READ | PROT_WRITE])
KEYS = st.sampled_from(["dev-a", "dev-b", "test"])


@st.composite
def disjoint_ranges(draw, max_n=4, step=0x1000, start_lo=0):
    """Sorted, non-overlapping inclusive ranges with start < last."""
    n = draw(st.integers(0, max_n))
    out, cur = [], draw(st.integers(start_lo, 0x40000))
    for _ in range(n):
        # Often right after the previous range: adjacent ranges form one window.
        s = cur + draw(st.one_of(st.just(0), st.sampled_from([1, 0x800, 0x1000]), st.integers(0, 0x40000)))
        size = draw(st.one_of(st.integers(1, 0x40000), st.sampled_from([step - 1, step, 2 * step - 1])))
        out.append((s, s + size))
        cur = s + size + 1
    return out


def want(x):
    """A model answer as ("ok", value) or ("err", errno): the model gives an
    errno (int), ("iova", x), or None for success without a value."""
    if isinstance(x, int):
        return ("err", x)
    return ("ok", None if x is None else x[1])


class IoasMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self._saved_check = ioas_mod.check_access
        ioas_mod.check_access = lambda pid, addr, length, write, page_size=PAGE: None
        uid = os.getuid()
        self.ctx = Context(None, uid)
        self.caller = Caller(threading.get_native_id(), uid, os.getgid())
        self.owner = self.ctx.owners.hold(self.caller)
        self.ioas = Ioas(self.ctx)
        self.model = Model()
        self.doms = []

    def teardown(self):
        ioas_mod.check_access = self._saved_check
        self.ioas.destroy()
        self.ctx.owners.release(self.owner)
        assert len(self.ctx.owners) == 0

    def call(self, fn, *args):
        try:
            return ("ok", fn(*args))
        except UapiError as e:
            return ("err", e.errno)

    # -- rules --------------------------------------------------------------------------------------
    @rule(va=VAS, length=LENGTHS, iova=IOVAS, prot=PROTS, fixed=st.booleans())
    def map(self, va, length, iova, prot, fixed):
        expect = want(self.model.map_user(va, length, iova, prot, fixed))
        assert self.call(self.ioas.map_user, self.owner, va, length, iova, prot, fixed) == expect

    @rule(data=st.data(), length=LENGTHS, iova=IOVAS, prot=PROTS, fixed=st.booleans())
    def copy(self, data, length, iova, prot, fixed):
        if self.model.areas and data.draw(st.booleans()):
            start = data.draw(st.sampled_from(sorted(self.model.areas)))
            src = start + data.draw(st.integers(0, self.model.areas[start][0] - 1))
            length = data.draw(st.one_of(st.just(length), st.integers(1, 0x8000)))
        else:
            src = data.draw(IOVAS)
        pieces = self.model.get_pages(src, length)
        kind, got = self.call(self.ioas.get_pages, src, length)
        if isinstance(pieces, int):
            assert (kind, got) == ("err", pieces)
            return
        assert [(p.user_va, p.length, p.pages.writable) for p in got] == pieces
        expect = want(self.model.map_pieces(pieces, length, iova, fixed, prot))
        assert self.call(self.ioas.copy_in, got, length, iova, prot, fixed) == expect

    def _draw_unmap(self, data):
        """An unmap range (start, length) and the model's (errno, bytes)."""
        if self.model.areas and data.draw(st.booleans()):
            keys = sorted(self.model.areas)
            i = data.draw(st.integers(0, len(keys) - 1))
            j = data.draw(st.integers(i, min(i + 3, len(keys) - 1)))
            start = keys[i] - data.draw(st.sampled_from([0, 0, 1]))
            last = keys[j] + self.model.areas[keys[j]][0] - 1 + data.draw(st.sampled_from([0, 0, -1, 5]))
            start, last = max(start, 0), max(last, start)
            length = last - start + 1
        else:
            start, length = data.draw(IOVAS), data.draw(LENGTHS)
        if length == 0:
            err, total = errno.EINVAL, 0
        elif start + length - 1 > U64_MAX:
            err, total = errno.EOVERFLOW, 0
        else:
            err, total = self.model.unmap(start, start + length - 1)
        return start, length, err, total

    @rule(data=st.data())
    def unmap(self, data):
        start, length, err, total = self._draw_unmap(data)
        assert self.call(self.ioas.unmap, start, length) == (("err", err) if err else ("ok", total))

    @rule(data=st.data())
    def unmap_counted(self, data):
        start, length, err, total = self._draw_unmap(data)
        n, e = self.ioas.unmap_counted(start, length)
        assert (n, e.errno if e else None) == (total, err)

    @rule(data=st.data())
    def split(self, data):
        if self.model.areas and data.draw(st.booleans()):
            start = data.draw(st.sampled_from(sorted(self.model.areas)))
            n = self.model.areas[start][0]
            iova = start + data.draw(st.one_of(
                st.integers(0, n - 1),
                st.sampled_from([x for x in (0x7FF, 0x800, 0xFFF, 0x17FF, 0x1FFF, n // 2, n - 1) if x < n])))
        else:
            iova = data.draw(IOVAS)
        assert self.call(self.ioas.split_at, iova) == want(self.model.split(iova))

    @rule()
    def unmap_all(self):
        err, total = self.model.unmap(0, U64_MAX)
        assert not err and self.call(self.ioas.unmap_all) == ("ok", total)

    @rule(ranges=disjoint_ranges())
    def allow(self, ranges):
        err = errno.EADDRINUSE if any(m_meets(self.model.reserved_ranges(), s, l) for s, l in ranges) else None
        assert self.call(self.ioas.set_allowed, ranges) == want(err)
        if err is None:
            self.model.allowed = sorted(ranges)

    @rule(key=KEYS, ranges=disjoint_ranges(max_n=3))
    def reserve(self, key, ranges):
        expect = want(self.model.add_reserved(key, ranges))
        assert self.call(self.ioas.add_reserved, key, ranges) == expect

    @rule(key=KEYS)
    def unreserve(self, key):
        self.model.reserved.pop(key, None)
        self.ioas.remove_reserved(key)

    @rule(ps=st.sampled_from([2048, 4096, 8192]),
          aperture=st.sampled_from([None, (0, (1 << 48) - 1), (1 << 24, (1 << 31) - 1), (0x1000, U64_MAX)]))
    def add_domain(self, ps, aperture):
        dom = Dom(ps, aperture)
        err = self.model.add_domain(ps, aperture, ("domain", id(dom)))
        assert self.call(self.ioas.add_domain, dom) == want(err)
        if err is None:
            self.doms.append(dom)
            assert sorted(dom.maps) == sorted(self.model.areas)       # one map per area

    @precondition(lambda self: self.doms)
    @rule(data=st.data())
    def remove_domain(self, data):
        dom = data.draw(st.sampled_from(self.doms))
        self.doms.remove(dom)
        self.model.domains = [d for d in self.model.domains if d[1] != ("domain", id(dom))]
        self.model.reserved.pop(("domain", id(dom)), None)
        assert self.model.recalc() is None
        self.ioas.remove_domain(dom)
        assert dom.maps == {}

    @rule(enable=st.booleans())
    def huge_pages(self, enable):
        m = self.model
        if enable:
            m.no_huge = False
            err = m.recalc()
        elif m.no_huge:
            err = None
        elif m.domains and m.areas:
            err = errno.EINVAL
        else:
            m.no_huge = True
            err = m.recalc()
            if err:
                m.no_huge = False
        assert self.call(self.ioas.set_large_pages, enable) == want(err)

    # -- invariants ----------------------------------------------------------------------------------
    @invariant()
    def same_state(self):
        io, m = self.ioas, self.model
        got = [(a.iova, a.length, a.user_va, a.prot, a.pages.writable) for a in io.areas.values()]
        want = [(i, n, va, prot, w) for i, (n, va, prot, w) in sorted(m.areas.items())]
        assert got == want
        assert io.iova_alignment == m.align
        assert io.disable_large_pages == m.no_huge
        assert io.iova_ranges() == m_holes(m.reserved_ranges(), 0, U64_MAX)
        assert list(io.free) == m.free()
        for d in self.doms:
            assert d.mirrors(m.areas)
        assert all(a.pinned == bool(self.doms) for a in io.areas.values())
        # One owner reference per area (plus the machine's own); every area
        # is linked from its pages, split pieces included.
        assert self.owner.refs == len(io.areas) + 1
        assert all(a in a.pages.areas() for a in io.areas.values())


IoasMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("IOMMUFS_PROP_EXAMPLES", "150")),
    stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestIoasModel = IoasMachine.TestCase
