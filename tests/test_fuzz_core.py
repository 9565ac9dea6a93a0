"""Fuzzing core directly, with hypothesis: no mount, no transport.

The mount fuzz (test_fuzz.py) proves the server survives; this one finds
the same class of defect in core where hypothesis can shrink it to a
minimal sequence. Each example is a fresh emulator with one context, a
device bound and attached and a buffer mapped, then a sequence of calls
whose commands and struct fields hypothesis draws (edge values of sizes,
IOVAs, lengths, ids, flags; pointer fields into mapped, read-only,
PROT_NONE, straddling and bad memory of this process), through a pointer
(MemArg, as a real ioctl) or in a request frame (FrameArg); plus IODM
frames to the device and driver-node calls. Every call must return a
result or raise UapiError (an errno), never anything else, and closing
everything must leave the devices free.

Derandomized by default (a fixed sequence of examples per hypothesis
version: a failure is replayed by running the test again, and hypothesis
prints the shrunk sequence). IOMMUFS_FUZZ_SEED (an integer) explores
another sequence; IOMMUFS_FUZZ_EXAMPLES sets the number of examples (150).
"""
import errno
import os

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from core import uapi  # noqa: F401
from core.caller import Caller
from core.errors import UapiError
from core.uapi import ffi
from core.files import NotYet
from core.mm.usermem import FrameArg, MemArg
from corekit import Kit, dma_request, open_node
from fuzzkit import (DMA_REQ, INT_CMDS, KERNEL, LAST_PAGES, NONCANONICAL, PAGE, STRUCTS,
                     TEST_OPS, VFIO_STRUCTS, Memory, IOMMU_CMDS, DRIVER_CMDS, VFIO_CMDS)

MEM = None

U64_EDGES = (0, 1, 7, 0xFFF, PAGE, PAGE + 1, 1 << 20, (1 << 32) - 1, 1 << 32, (1 << 48) - PAGE,
             1 << 48, 1 << 57, 1 << 63, (1 << 64) - PAGE, (1 << 64) - 2, (1 << 64) - 1)
POINTERS = ("ram", "ram_end", "ro", "none", "edge", "hole", "null", "last", "kernel", "noncanonical")


def memory():
    global MEM
    if MEM is None:
        MEM = Memory()
    return MEM


def pointer(name, data):
    m = memory()
    return {
        "ram": lambda: m.ram + data.draw(st.integers(0, m.ram_len - 1)),
        "ram_end": lambda: m.ram + m.ram_len - data.draw(st.integers(1, 64)),
        "ro": lambda: m.ro + data.draw(st.integers(0, PAGE - 1)),
        "none": lambda: m.none,
        "edge": lambda: m.edge - data.draw(st.integers(1, 64)),
        "hole": lambda: m.hole,
        "null": lambda: 0,
        "last": lambda: data.draw(st.sampled_from(LAST_PAGES)),
        "kernel": lambda: data.draw(st.sampled_from(KERNEL)),
        "noncanonical": lambda: data.draw(st.sampled_from(NONCANONICAL)),
    }[name]()


def field_value(data, name, ctype):
    bits = ffi.sizeof(ctype) * 8
    mask = (1 << bits) - 1
    if name in ("user_va", "allowed_iovas", "data_uptr", "uptr", "vaddr", "token_uuid_ptr"):
        v = pointer(data.draw(st.sampled_from(POINTERS)), data)
    elif bits == 64:
        v = data.draw(st.one_of(st.sampled_from(U64_EDGES), st.integers(0, mask)))
    elif name.endswith("id") or name in ("id", "iommufd", "handle"):
        v = data.draw(st.one_of(st.integers(0, 8), st.just(mask)))
    elif name.startswith("__reserved"):
        v = data.draw(st.one_of(st.just(0), st.integers(0, mask)))
    else:
        v = data.draw(st.one_of(st.sampled_from((0, 1, 2, 3, 4, 5, 7, 8, 15, 1024, mask)),
                                st.integers(0, mask)))
    v &= mask
    if ctype.cname.startswith("int") and v >> (bits - 1):
        v -= 1 << bits
    return v


def fill(data, cdata, ctype):
    for name, field in ctype.fields:
        t = field.type
        if t.kind in ("struct", "union"):
            fill(data, getattr(cdata, name), t)
        elif t.kind == "primitive":
            setattr(cdata, name, field_value(data, name, t))


def argument(data, cmd):
    """The bytes of an argument for ``cmd``, size word included."""
    name = STRUCTS.get(cmd) or VFIO_STRUCTS.get(cmd)
    if name is None:
        return data.draw(st.binary(max_size=48))
    ctype = ffi.typeof(f"struct {name}")
    c = ffi.new(f"struct {name} *")
    if name == "iommu_test_cmd":
        c.op = data.draw(st.sampled_from(sorted(TEST_OPS)))
        c.id = data.draw(st.integers(0, 8))
        member = TEST_OPS[c.op]
        fill(data, getattr(c, member), ffi.typeof(getattr(c, member)))
    else:
        fill(data, c, ctype)
    size = ffi.sizeof(ctype)
    setattr(c, ctype.fields[0][0], data.draw(st.sampled_from(
        (size, size, size, 0, 4, size - 1, size - 4, size + 8, 0xFFFFFFFF))))
    return bytes(ffi.buffer(c))


def call(fn, *args):
    """Run one core call: its result, or the errno it raised. A request
    that would wait (core.files.NotYet: a PRI fault, fds to resolve) is
    abandoned, as devfs does when the caller gives up."""
    try:
        return fn(*args)
    except UapiError as e:
        assert e.errno > 0, e
        return -e.errno
    except NotYet as e:
        if getattr(e, "abandon", None):
            e.abandon()
        return -errno.EINTR


def as_arg(data, kit, raw):
    """The argument as a pointer into this process or as a frame."""
    how = data.draw(st.sampled_from(("scratch", "scratch", "frame", "ro", "edge", "bad")))
    m = memory()
    if how == "frame":
        return FrameArg(raw)
    if how == "scratch":
        # In the RAM buffer's spill area, not on the heap: core writes back
        # what the struct's size says (GET_REGION_INFO's argsz...), and a
        # write past a heap buffer would corrupt this very process.
        at = m.ram + m.ram_len + (2 << 20)
        m.put(at, raw)
        return MemArg(kit.caller.mem, at)
    if how == "ro" and len(raw) <= PAGE:
        m.put_ro(PAGE - len(raw), raw)
        return MemArg(kit.caller.mem, m.ro + PAGE - len(raw))
    if how == "edge" and raw:
        k = data.draw(st.integers(0, len(raw) - 1))
        m.put(m.edge - k, raw[:k])
        return MemArg(kit.caller.mem, m.edge - k)
    return MemArg(kit.caller.mem, pointer(data.draw(st.sampled_from(POINTERS[4:])), data))


SEED = os.environ.get("IOMMUFS_FUZZ_SEED")
EXAMPLES = int(os.environ.get("IOMMUFS_FUZZ_EXAMPLES", "150"))


@settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@seed(int(SEED) if SEED and SEED.isdigit() else 0)
@given(st.data())
def test_core_answers_every_call_with_a_result_or_an_errno(data):
    """See the module docstring."""
    m = memory()
    kit = Kit()
    vf, dev_id = kit.bind("0000:00:03.0")
    ioas = kit.ioas()
    kit.attach(vf, ioas)
    kit.map(ioas, m.ram, m.ram_len, iova=0x100000)
    pri, pri_id = kit.bind("0000:00:05.0")
    drv = open_node(kit.emu, "devices/0000:00:05.0/driver", kit.caller)
    devices = [kit.emu.devices[n] for n in ("0000:00:03.0", "0000:00:05.0", "mdev0")]
    # fd 7 of this caller is the context, for BIND's iommufd (corekit's convention).
    vcaller = Caller(kit.caller.tid, kit.caller.uid, kit.caller.gid, fds={7: kit.ctx})
    try:
        for _ in range(data.draw(st.integers(1, 25))):
            kind = data.draw(st.sampled_from(("iommu", "iommu", "iommu", "vfio", "dma", "driver")))
            if kind == "dma":
                op = data.draw(st.sampled_from((1, 2, 0, 3)))
                length = data.draw(st.sampled_from((0, 1, 8, PAGE, PAGE + 1, 512 << 10, 0xFFFFFFFF)))
                iova = data.draw(st.one_of(st.sampled_from((0x100000, 0x100000 + m.ram_len - 4)),
                                           st.sampled_from(U64_EDGES)))
                flags = data.draw(st.sampled_from((0, 1, 2, 3)))
                body = bytes(min(length, 2 * PAGE)) if op == 2 else b""
                req = DMA_REQ.pack(b"IODM", op, flags, data.draw(st.sampled_from((0, 1, 2, 255))),
                                   iova, length, 0) + body
                rep = call(dma_request, kit.emu, data.draw(st.sampled_from(devices)), kit.caller, req)
                assert isinstance(rep, (bytes, bytearray, int)), rep
                if isinstance(rep, (bytes, bytearray)):
                    assert rep[:4] == b"IODM" and len(rep) >= 24
                continue
            cmds = {"iommu": IOMMU_CMDS, "vfio": VFIO_CMDS, "driver": DRIVER_CMDS}[kind]
            cmd = data.draw(st.sampled_from(cmds))
            if cmd in INT_CMDS:
                arg = MemArg(kit.caller.mem, data.draw(st.sampled_from((0, 1, 3, 8, 9, 1 << 40))))
            else:
                arg = as_arg(data, kit, argument(data, cmd))
            if kind == "iommu":
                r = call(kit.iommufd.ioctl, kit.caller, cmd, arg)
            elif kind == "vfio":
                target = data.draw(st.sampled_from((vf, pri)))
                r = call(target.ioctl, vcaller, cmd, arg)
            else:
                r = call(drv.ioctl, kit.caller, cmd, arg)
            assert isinstance(r, int), r
    finally:
        drv.release()
        kit.close()
    for d in devices:
        info = d.info()
        assert info["dev_id"] is None and info["attached"] == {} and info["sva_bonds"] == [], info
