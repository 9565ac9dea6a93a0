"""Unit tests of I/O page faults (issue 4), core only, no mount.

Reference §10.1 (fault queue fd: read, write, poll, cookies, ESPIPE/EINVAL
rules), §9.1 (FAULT_ID_VALID), §8 (detach/replace answer pending faults),
seed 004 (fault routing {RID, PASID} -> device cookie). A DMA from a PRI
device raises core.iommu.dma.DmaWait; the test plays the transport: it answers
through the queue and calls ``resume()``.
"""
import errno
import os
import struct

import pytest

from core import uapi
from core.iommu.dma import REPLY, REQ, DmaWait
from core.errors import UapiError
from core.iommufd.fault import RECORD
from core.topology import Topology
from devfs.client import Buffer

from corekit import Kit, dma_request, new, open_node

PLAIN, ACCEL, LOCAL = "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"
BR0 = "0000:01:00.0"
PAGE = 4096
LAST = uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE
PASID_VALID = uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID
R, W = uapi.IOMMU_PGFAULT_PERM_READ, uapi.IOMMU_PGFAULT_PERM_WRITE


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


def frame(op, iova, length, data=b"", pasid=None, no_pri=False):
    flags = (1 if pasid is not None else 0) | (2 if no_pri else 0)
    return REQ.pack(b"IODM", op, flags, pasid or 0, iova, length, 0) + data


def status(rep):
    magic, st, moved, _, fault = REPLY.unpack_from(rep)
    return st, moved, fault, rep[REPLY.size:]


def write_dma(kit, name, iova, data, **kw):
    """A DMA write: its reply, or the DmaWait it raised."""
    try:
        return status(dma_request(kit.emu, kit.emu.devices[name], kit.caller, frame(2, iova, len(data), data, **kw)))
    except DmaWait as w:
        return w


def records(data):
    keys = ("flags", "dev_id", "pasid", "grpid", "perm", "rsvd", "addr", "length", "cookie")
    return [dict(zip(keys, RECORD.unpack_from(data, o))) for o in range(0, len(data), RECORD.size)]


class Setup:
    """A fault queue, an IOPF-capable HWPT on an IOAS, a device attached."""

    def __init__(self, kit, name=ACCEL, pasid=None, flags=0):
        self.kit = kit
        c = new("iommu_fault_alloc")
        kit.caller.returned.clear()
        kit.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, c)
        self.fault_id = c.out_fault_id
        assert c.out_fault_fd == 0xFFFFFFFF               # -1: the fd is a node (docs/nodes.md)
        self.ffile = kit.caller.returned.pop()
        self.ffile.opened()                               # the client opens the node
        self.q = self.ffile.queue
        self.ioas = kit.ioas()
        self.vf, self.dev_id = kit.bind(name)
        h = new("iommu_hwpt_alloc", dev_id=self.dev_id, pt_id=self.ioas, fault_id=self.fault_id,
                flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID | flags)
        kit.ioctl(uapi.IOMMU_HWPT_ALLOC, h)
        self.hwpt = h.out_hwpt_id
        kit.attach(self.vf, self.hwpt, pasid=pasid)

    def read(self, count=40 * 64):
        return records(self.q.read(count))


def test_fault_queue_alloc_and_its_fd_reference(kit):
    c = new("iommu_fault_alloc", flags=1)
    assert kit.err(uapi.IOMMU_FAULT_QUEUE_ALLOC, c) == errno.EOPNOTSUPP
    assert kit.caller.returned == []
    c.flags = 0
    kit.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, c)
    assert c.out_fault_id == 1 and c.out_fault_fd == 0xFFFFFFFF
    (ffile,) = kit.caller.returned
    assert kit.destroy_err(1) == errno.EBUSY              # the fd holds it (§10.1)
    ffile.opened()
    ffile.opened()                                        # two opens of the node: one fd
    ffile.released()
    assert kit.destroy_err(1) == errno.EBUSY
    ffile.released()                                      # the last close closes the fd
    assert ffile.closed
    kit.destroy(1)
    c = new("iommu_fault_alloc")
    c.size = 15
    assert kit.err(uapi.IOMMU_FAULT_QUEUE_ALLOC, c) == errno.EINVAL


def test_hwpt_holds_the_fault_object(kit):
    s = Setup(kit)
    s.ffile.released()
    assert kit.destroy_err(s.fault_id) == errno.EBUSY     # the HWPT uses it
    s.vf.release()
    kit.destroy(s.hwpt)
    kit.destroy(s.fault_id)
    c = new("iommu_hwpt_alloc", dev_id=kit.bind(ACCEL)[1], pt_id=s.ioas, fault_id=s.fault_id,
            flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.ENOENT


def test_pri_dma_waits_for_the_page_response_then_completes(kit):
    s = Setup(kit)
    buf = Buffer(4 * PAGE)
    w = write_dma(kit, ACCEL, 0x100000 + 8, b"late")
    assert isinstance(w, DmaWait)
    assert s.q.readable()
    fd = w.wait_fd
    (rec,) = s.read()
    assert rec == {"flags": LAST, "dev_id": s.dev_id, "pasid": 0, "grpid": rec["grpid"], "perm": W,
                   "rsvd": 0, "addr": 0x100000, "length": 0, "cookie": 1}
    assert not s.q.readable()
    kit.map(s.ioas, buf.va, 4 * PAGE, iova=0x100000)      # the handler fixes the mapping
    assert s.q.write(struct.pack("<II", 1, uapi.IOMMU_PAGE_RESP_SUCCESS)) == 8
    assert os.eventfd_read(fd) == 1                       # the waiter is woken
    st, moved, fault, _ = status(w.resume())
    assert (st, moved) == (0, 4)
    assert buf[8:12] == b"late"


def test_invalid_response_fails_the_dma(kit):
    s = Setup(kit)
    w = write_dma(kit, ACCEL, 0x200004, b"x")
    (rec,) = s.read()
    s.q.write(struct.pack("<II", rec["cookie"], uapi.IOMMU_PAGE_RESP_INVALID))
    st, moved, fault, _ = status(w.resume())
    assert (st, moved, fault) == (-errno.EFAULT, 0, 0x200004)
    assert kit.emu.devices[ACCEL].info()["last_fault"]["iova"] == 0x200004


def test_one_group_per_dma_with_every_missing_page(kit):
    s = Setup(kit)
    buf = Buffer(8 * PAGE)
    kit.map(s.ioas, buf.va + PAGE, PAGE, iova=0x301000)   # page 1 of 4 is mapped
    w = write_dma(kit, ACCEL, 0x300000 + 100, bytes(4 * PAGE - 200))
    recs = s.read()
    assert [r["addr"] for r in recs] == [0x300000, 0x302000, 0x303000]
    assert [r["flags"] for r in recs] == [0, 0, LAST]
    assert len({r["grpid"] for r in recs}) == 1 and len({r["cookie"] for r in recs}) == 1
    # Map the rest, answer: the DMA retries once and completes.
    kit.map(s.ioas, buf.va, PAGE, iova=0x300000)
    kit.map(s.ioas, buf.va + 2 * PAGE, 2 * PAGE, iova=0x302000)
    s.q.write(struct.pack("<II", recs[0]["cookie"], 0))
    assert status(w.resume())[:2] == (0, 4 * PAGE - 200)


def test_success_without_a_fix_fails_after_one_round(kit):
    s = Setup(kit)
    w = write_dma(kit, ACCEL, 0x400000, b"x")
    (rec,) = s.read()
    s.q.write(struct.pack("<II", rec["cookie"], 0))
    st, _, fault, _ = status(w.resume())
    assert (st, fault) == (-errno.EFAULT, 0x400000)
    assert s.read() == []                                 # no second page request


def test_read_rules(kit):
    s = Setup(kit)
    assert s.q.read(0) == b"" and s.q.read(40) == b""     # empty: 0
    with pytest.raises(UapiError) as e:
        s.q.read(39)
    assert e.value.errno == errno.ESPIPE
    waits = [write_dma(kit, ACCEL, 0x500000 + i * 2 * PAGE, bytes(PAGE + 1)) for i in range(3)]
    assert all(isinstance(w, DmaWait) for w in waits)      # three groups of two records
    for count in (0, 40):
        with pytest.raises(UapiError) as e:
            s.q.read(count)                               # not even the first group fits
        assert e.value.errno == errno.EINVAL
    with pytest.raises(UapiError) as e:
        s.q.read(100)
    assert e.value.errno == errno.ESPIPE
    first = s.read(120)                                   # whole groups only: one
    assert len(first) == 2 and {r["cookie"] for r in first} == {1}
    rest = s.read(400)
    assert [r["cookie"] for r in rest] == [2, 2, 3, 3]
    # Cookies: the lowest free one is reused once answered.
    s.q.write(struct.pack("<II", 2, 1))
    write_dma(kit, ACCEL, 0x600000, b"y")
    assert [r["cookie"] for r in s.read()] == [2]


def test_write_rules(kit):
    s = Setup(kit)
    w1 = write_dma(kit, ACCEL, 0x700000, b"a")
    w2 = write_dma(kit, ACCEL, 0x710000, b"b")
    s.read()
    for data, err in [(b"1234567", errno.ESPIPE), (struct.pack("<II", 1, 2), errno.EINVAL),
                      (struct.pack("<II", 9, 0), errno.EINVAL)]:
        with pytest.raises(UapiError) as e:
            s.q.write(data)
        assert e.value.errno == err
    assert w1.group.done is None
    # A good record then a bad one: the bytes before it count.
    assert s.q.write(struct.pack("<IIII", 1, 1, 7, 0)) == 8
    assert w1.group.done == 1 and w2.group.done is None
    with pytest.raises(UapiError) as e:
        s.q.write(struct.pack("<II", 1, 0))               # answered once only
    assert e.value.errno == errno.EINVAL
    assert s.q.write(struct.pack("<II", 2, 0)) == 8
    assert s.q.write(b"") == 0


def test_detach_replace_and_destroy_answer_invalid(kit):
    s = Setup(kit)
    w = write_dma(kit, ACCEL, 0x800000, b"d")
    s.read()
    w2 = write_dma(kit, ACCEL, 0x810000, b"e")            # pending, not even read
    d = new("vfio_device_detach_iommufd_pt")
    kit.vfio(s.vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
    assert w.group.done == w2.group.done == uapi.IOMMU_PAGE_RESP_INVALID
    assert status(w.resume())[0] == -errno.EFAULT
    assert s.read() == [] and s.q.awaiting == {}
    # Replace: the old attachment's faults are answered too.
    kit.attach(s.vf, s.hwpt)
    w = write_dma(kit, ACCEL, 0x820000, b"f")
    kit.attach(s.vf, kit.ioas())
    assert w.group.done == uapi.IOMMU_PAGE_RESP_INVALID
    # Closing the context destroys the FAULT object: everything answered.
    kit.attach(s.vf, s.hwpt)
    w = write_dma(kit, ACCEL, 0x830000, b"g")
    s.ffile.released()
    kit.close()
    assert w.group.done == uapi.IOMMU_PAGE_RESP_INVALID


def test_abandoned_wait_closes_its_eventfd(kit):
    s = Setup(kit)
    w = write_dma(kit, ACCEL, 0x900000, b"z")
    fd = w.wait_fd
    w.abandon()                                            # the writer went away
    assert os.fstat(fd)                                     # still open: not answered yet
    (rec,) = s.read()
    s.q.write(struct.pack("<II", rec["cookie"], 0))
    with pytest.raises(OSError):
        os.fstat(fd)


def test_no_pri_no_queue_or_no_pri_flag_fails_at_once(kit):
    s = Setup(kit)
    assert write_dma(kit, ACCEL, 0xA00000, b"n", no_pri=True)[0] == -errno.EFAULT
    # A device without PRI on an IOPF-capable HWPT (one group with the accelerator).
    vf, dev_id = kit.bind(PLAIN)
    kit.attach(vf, s.hwpt)
    assert write_dma(kit, PLAIN, 0xA00000, b"n")[0] == -errno.EFAULT
    assert kit.emu.devices[PLAIN].info()["faults"] == 1
    # A PRI device on a HWPT without fault queue.
    vf2, d2 = kit.bind(LOCAL)
    kit.attach(vf2, s.ioas)
    assert write_dma(kit, LOCAL, 0xA00000, b"n")[0] == -errno.EFAULT
    assert s.read() == []


def test_fault_of_a_pasid_attachment_carries_the_pasid(kit):
    s = Setup(kit, pasid=5, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    w = write_dma(kit, ACCEL, 0xB00000, b"p", pasid=5)
    (rec,) = s.read()
    assert (rec["flags"], rec["pasid"], rec["dev_id"]) == (LAST | PASID_VALID, 5, s.dev_id)
    d = new("vfio_device_detach_iommufd_pt", flags=uapi.VFIO_DEVICE_DETACH_PASID, pasid=5)
    kit.vfio(s.vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
    assert w.group.done == uapi.IOMMU_PAGE_RESP_INVALID


def test_fault_of_an_mdev_reaches_the_mdev_cookie(kit):
    s = Setup(kit, name="mdev0")
    w = write_dma(kit, "mdev0", 0xC00000, b"m")
    (rec,) = s.read()
    # {parent RID, PASID 1} -> the mdev's DEVICE object (seed 004).
    assert (rec["dev_id"], rec["pasid"], rec["flags"]) == (s.dev_id, 1, LAST | PASID_VALID)
    vfp, dp = kit.bind(ACCEL)
    assert dp != s.dev_id
    w2 = write_dma(kit, ACCEL, 0xC01000, b"q", pasid=1)    # the parent, same TLPs
    (rec2,) = s.read()
    assert rec2["dev_id"] == s.dev_id
    s.vf.release()                               # unbind: detach answers them
    assert w.group.done == w2.group.done == uapi.IOMMU_PAGE_RESP_INVALID


def test_group_member_without_pri_fails_at_once():
    k = Kit()
    try:
        s = Setup(k, name=BR0)
        # Devices behind the bridge have no PRI: the DMA fails at once.
        assert write_dma(k, "0000:01:01.0", 0xD00000, b"g")[0] == -errno.EFAULT
    finally:
        k.close()


def test_sva_fault_is_reported_to_the_bond_driver(kit):
    from core.iommu.driver import EVENT

    d = open_node(kit.emu, f"devices/{ACCEL}/driver", kit.caller)
    bond = kit.emu.sva.bind(d, kit.caller, 0)
    d.bonds[bond.handle] = bond
    assert write_dma(kit, ACCEL, 16, b"x", pasid=bond.pasid)[0] == -errno.EFAULT
    data = d.read(kit.caller, 64, 0)
    assert EVENT.unpack_from(data) == (uapi.IOMMUFS_EVENT_IOPF, bond.handle, bond.pasid, os.getpid(), 16, 2, 0)
    d.release()


def test_pri_device_topology_flags():
    t = Topology.builtin()
    by = {d.name: d for d in t.devices}
    assert by[ACCEL].pri and by[LOCAL].pri and by["mdev0"].pri
    assert not by[PLAIN].pri and not by[BR0].pri
