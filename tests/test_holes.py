"""Tests of the free IOVA space in C (cext/holes.c) through core.mm.iova.FreeSpace.

The holes are held against a naive model (the used ranges, merged, and their
gaps), after every step, together with the structure's own invariant check
(``iofs_holes_check``: sorted blocks, block fill, holes disjoint and not
adjacent, each hole in exactly its size class). The allocator on top of it is
held against the kernel's arithmetic in test_iova_alloc_prop.py.
"""
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cext._native import ffi, lib
from core.mm.iova import U64_MAX, FreeSpace, holes, merge, subtract

PAGE = 4096


def check(fs):
    assert lib.iofs_holes_check(fs._h) == 0


def cls(s, l):
    return (l - s + 1).bit_length() - 1


class Model:
    """Used space as merged inclusive ranges."""

    def __init__(self):
        self.used = []

    def take(self, s, l):
        self.used = merge(self.used + [(s, l)])

    def give(self, s, l):
        assert subtract([(s, l)], self.used) == []
        self.used = subtract(self.used, [(s, l)])

    def holes(self):
        return holes(self.used)


def same(fs, model):
    want = model.holes()
    assert list(fs) == want
    assert len(fs) == len(want)
    for c in range(65):
        assert class_list(fs, c) == [h for h in want if cls(*h) == c], c
    mask = sum(1 << c for c in {cls(*h) for h in want} if c < 64)
    assert lib.iofs_holes_classes(fs._h) == mask


def class_list(fs, c):
    """The holes of size class ``c`` in address order, as the allocator sees them."""
    out, got, cur = ffi.new("uint64_t[2]"), [], 0
    while lib.iofs_holes_class_from(fs._h, c, cur, out):
        got.append((out[0], out[1]))
        if out[1] == U64_MAX:
            break
        cur = out[1] + 1
    return got


def test_new_is_one_hole_of_class_64():
    fs = FreeSpace()
    check(fs)
    assert list(fs) == [(0, U64_MAX)] and len(fs) == 1
    assert fs.containing(0) == fs.containing(U64_MAX) == (0, U64_MAX)
    assert lib.iofs_holes_classes(fs._h) == 0
    assert class_list(fs, 64) == [(0, U64_MAX)]


def test_take_and_give_split_and_merge():
    fs, m = FreeSpace(), Model()
    for s, l in [(0x1000, 0x1fff), (0x3000, 0x3fff), (0, 0), (U64_MAX, U64_MAX)]:
        fs.take(s, l)
        m.take(s, l)
        check(fs)
        same(fs, m)
    assert fs.containing(0x2000) == (0x2000, 0x2fff)
    assert fs.containing(0x1000) is None and fs.containing(0) is None
    # A range across holes and used space, partly used already.
    fs.take(0x1800, 0x5000)
    m.take(0x1800, 0x5000)
    same(fs, m)
    # Give back the middle: it merges with nothing on either side...
    fs.give(0x2000, 0x2fff)
    m.give(0x2000, 0x2fff)
    same(fs, m)
    # ...then the rest, merging on both sides into one hole again.
    for s, l in [(0x1000, 0x1fff), (0x3000, 0x5000), (0, 0), (U64_MAX, U64_MAX)]:
        fs.give(s, l)
        m.give(s, l)
        check(fs)
    assert list(fs) == [(0, U64_MAX)]


def test_take_of_used_space_changes_nothing_and_give_of_free_space_is_refused():
    fs = FreeSpace()
    fs.take(0x1000, 0x1fff)
    before = list(fs)
    fs.take(0x1000, 0x1fff)
    fs.take(0x1800, 0x18ff)
    assert list(fs) == before
    with pytest.raises(AssertionError):
        fs.give(0x1000, 0x2000)            # 0x2000 is free
    with pytest.raises(AssertionError):
        fs.give(0, 0x1000)
    assert list(fs) == before
    check(fs)
    assert lib.iofs_holes_take(fs._h, 5, 4) < 0 and lib.iofs_holes_give(fs._h, 5, 4) < 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_holes_against_the_model(seed):
    # Thousands of holes: blocks split, merge and even out (64 entries each).
    rng = random.Random(seed)
    fs, m = FreeSpace(), Model()
    base = rng.choice([0, 1 << 40, U64_MAX - (1 << 30)])
    most = 0
    for step in range(6000):
        if rng.random() < 0.6 or not m.used:
            s = base + rng.randrange(0, 1 << 24, PAGE)
            l = min(U64_MAX, s + rng.choice([1, PAGE, 3 * PAGE, 64 * PAGE]) - 1)
            fs.take(s, l)
            m.take(s, l)
        else:
            us, ul = rng.choice(m.used)
            s = rng.randint(us, ul)
            l = rng.randint(s, ul)
            fs.give(s, l)
            m.give(s, l)
        check(fs)
        most = max(most, len(fs))
        if step % 500 == 0:
            same(fs, m)
    same(fs, m)
    assert most > 3 * lib.IOFS_HOLES_BLK
    # Give everything back: one hole again, through every merge path.
    for s, l in list(m.used):
        fs.give(s, l)
    check(fs)
    assert list(fs) == [(0, U64_MAX)]


def test_sequential_maps_and_unmaps_at_scale():
    # The benchmark's pattern: one page every two, then the reverse.
    fs = FreeSpace()
    n = 20000
    for i in range(n):
        fs.take((1 << 32) + 2 * i * PAGE, (1 << 32) + 2 * i * PAGE + PAGE - 1)
    check(fs)
    assert len(fs) == n + 1
    assert fs.containing((1 << 32) + PAGE) == ((1 << 32) + PAGE, (1 << 32) + 2 * PAGE - 1)
    for i in reversed(range(n)):
        fs.give((1 << 32) + 2 * i * PAGE, (1 << 32) + 2 * i * PAGE + PAGE - 1)
    check(fs)
    assert list(fs) == [(0, U64_MAX)]


def test_blocks_even_out_with_a_full_left_neighbour():
    # Laid out on purpose (64 entries a block, 32 after a split): the holes
    # of one block grow it past 3/4 full, then the holes of the last block
    # merge away until it is under 1/4 full, so it takes entries from its
    # left neighbour instead of merging with it.
    fs, m = FreeSpace(), Model()
    n = 200
    for i in range(n):                       # 3-page holes between used pages
        fs.take(4 * i * PAGE, 4 * i * PAGE + PAGE - 1)
        m.take(4 * i * PAGE, 4 * i * PAGE + PAGE - 1)
    for i in range(130, 150):                # split holes of the next-to-last block
        fs.take((4 * i + 2) * PAGE, (4 * i + 3) * PAGE - 1)
        m.take((4 * i + 2) * PAGE, (4 * i + 3) * PAGE - 1)
    check(fs)
    for i in range(161, 188):                # merge holes of the last block
        fs.give(4 * i * PAGE, 4 * i * PAGE + PAGE - 1)
        m.give(4 * i * PAGE, 4 * i * PAGE + PAGE - 1)
        check(fs)
    same(fs, m)


# Edges of the space and sizes around powers of two, where classes change.
POINTS = st.one_of(st.integers(0, 0x40), st.integers(U64_MAX - 0x40, U64_MAX),
                   st.sampled_from([1 << 63, (1 << 63) - 1, 1 << 32]))


class HolesMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.fs = FreeSpace()
        self.m = Model()

    @rule(a=POINTS, b=POINTS)
    def take(self, a, b):
        s, l = min(a, b), max(a, b)
        self.fs.take(s, l)
        self.m.take(s, l)

    @rule(data=st.data())
    def give(self, data):
        if not self.m.used:
            return
        us, ul = data.draw(st.sampled_from(self.m.used))
        s = data.draw(st.integers(us, ul))
        l = data.draw(st.integers(s, ul))
        self.fs.give(s, l)
        self.m.give(s, l)

    @rule(p=POINTS)
    def containing(self, p):
        want = next(((s, l) for s, l in self.m.holes() if s <= p <= l), None)
        assert self.fs.containing(p) == want

    @invariant()
    def agrees(self):
        check(self.fs)
        same(self.fs, self.m)


TestHolesMachine = HolesMachine.TestCase
TestHolesMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
