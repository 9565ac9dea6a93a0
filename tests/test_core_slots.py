"""The table slots of the 7.3 header's ioctls that the emulator does not
(fully) serve: the generic size rules (§3) run first, then each handler's
own checks in the kernel's order up to the point it cannot go on (§7, §9.4,
§9.5). The kernel selftest's ``cmd_length`` walks exactly these rules."""
import errno

import pytest

from core import uapi
from core.errors import UapiError
from core.uapi import ffi

from corekit import Kit, addr, new

PLAIN = "0000:00:03.0"
RW = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


# (struct, ioctl, last mandatory field) as the selftest's cmd_length lists them
SLOTS = [
    ("iommu_hwpt_invalidate", uapi.IOMMU_HWPT_INVALIDATE, "__reserved"),
    ("iommu_ioas_map_file", uapi.IOMMU_IOAS_MAP_FILE, "iova"),
    ("iommu_viommu_alloc", uapi.IOMMU_VIOMMU_ALLOC, "out_viommu_id"),
    ("iommu_vdevice_alloc", uapi.IOMMU_VDEVICE_ALLOC, "virt_id"),
    ("iommu_ioas_change_process", uapi.IOMMU_IOAS_CHANGE_PROCESS, "__reserved"),
    ("iommu_veventq_alloc", uapi.IOMMU_VEVENTQ_ALLOC, "out_veventq_fd"),
    ("iommu_hw_queue_alloc", uapi.IOMMU_HW_QUEUE_ALLOC, "length"),
]


@pytest.mark.parametrize("struct,cmd,last", SLOTS)
def test_generic_size_rules_run_first(kit, struct, cmd, last):
    t = ffi.typeof(f"struct {struct}")
    field = dict(t.fields)[last]
    min_size = field.offset + ffi.sizeof(field.type)
    buf = ffi.new("uint8_t[]", ffi.sizeof(t) + 8)
    size = ffi.cast("uint32_t *", buf)
    size[0] = min_size - 1
    buf[ffi.sizeof(t)] = 0xFF
    assert kit.err(cmd, buf) == errno.EINVAL
    size[0] = ffi.sizeof(t) + 1
    assert kit.err(cmd, buf) == errno.E2BIG
    size[0] = ffi.sizeof(t)
    try:
        kit.ioctl(cmd, buf)
        first = 0
    except UapiError as e:
        first = e.errno
    assert first != errno.ENOTTY
    buf[ffi.sizeof(t)] = 0
    size[0] = ffi.sizeof(t) + 1
    if first:
        assert kit.err(cmd, buf) == first
    else:
        kit.ioctl(cmd, buf)


def test_hwpt_invalidate_core_rules_and_entry_num_write_back(kit):
    ioas = kit.ioas()
    c = new("iommu_hwpt_invalidate", hwpt_id=ioas, entry_num=3, __reserved=1)
    assert kit.err(uapi.IOMMU_HWPT_INVALIDATE, c) == errno.EOPNOTSUPP
    assert c.entry_num == 3                                   # nothing written back
    c = new("iommu_hwpt_invalidate", hwpt_id=ioas, entry_num=3, entry_len=8)
    assert kit.err(uapi.IOMMU_HWPT_INVALIDATE, c) == errno.EINVAL   # before the lookup
    assert c.entry_num == 0
    c = new("iommu_hwpt_invalidate", hwpt_id=ioas, entry_num=3, data_uptr=0x1000)
    assert kit.err(uapi.IOMMU_HWPT_INVALIDATE, c) == errno.EINVAL and c.entry_num == 0
    c = new("iommu_hwpt_invalidate", hwpt_id=999, entry_num=2, data_uptr=0x1000, entry_len=8)
    assert kit.err(uapi.IOMMU_HWPT_INVALIDATE, c) == errno.ENOENT and c.entry_num == 0
    vf, dev_id = kit.bind(PLAIN)
    paging = kit.hwpt(dev_id, ioas)
    for oid in (ioas, paging, dev_id):                        # not nested, not a vIOMMU
        c = new("iommu_hwpt_invalidate", hwpt_id=oid, entry_num=1, data_uptr=0x1000, entry_len=8)
        assert kit.err(uapi.IOMMU_HWPT_INVALIDATE, c) == errno.EINVAL and c.entry_num == 0


def test_ioas_map_file_checks_before_it_answers_not_supported(kit):
    ioas = kit.ioas()
    c = new("iommu_ioas_map_file", ioas_id=ioas, flags=0x100 | RW, length=4096)
    assert kit.err(uapi.IOMMU_IOAS_MAP_FILE, c) == errno.EOPNOTSUPP
    c = new("iommu_ioas_map_file", ioas_id=ioas, flags=RW, length=(1 << 64) - 1)
    assert kit.err(uapi.IOMMU_IOAS_MAP_FILE, c) == errno.EOVERFLOW
    c = new("iommu_ioas_map_file", ioas_id=ioas, flags=0, length=4096)
    assert kit.err(uapi.IOMMU_IOAS_MAP_FILE, c) == errno.EINVAL
    c = new("iommu_ioas_map_file", ioas_id=ioas + 1, flags=RW, length=4096)
    assert kit.err(uapi.IOMMU_IOAS_MAP_FILE, c) == errno.ENOENT


def test_viommu_family_without_a_viommu(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    parent = kit.hwpt(dev_id, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    c = new("iommu_viommu_alloc", flags=1, type=0xDEADBEEF, dev_id=dev_id, hwpt_id=parent)
    assert kit.err(uapi.IOMMU_VIOMMU_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_viommu_alloc", type=uapi.IOMMU_VIOMMU_TYPE_DEFAULT, dev_id=999)
    assert kit.err(uapi.IOMMU_VIOMMU_ALLOC, c) == errno.EOPNOTSUPP   # type before dev_id
    c = new("iommu_viommu_alloc", type=0xDEADBEEF, dev_id=999, hwpt_id=parent)
    assert kit.err(uapi.IOMMU_VIOMMU_ALLOC, c) == errno.ENOENT
    c = new("iommu_viommu_alloc", type=0xDEADBEEF, dev_id=dev_id, hwpt_id=parent, __reserved=7)
    assert kit.err(uapi.IOMMU_VIOMMU_ALLOC, c) == errno.EOPNOTSUPP   # no driver support
    for oid in (0, ioas, parent, dev_id):
        c = new("iommu_vdevice_alloc", viommu_id=oid, dev_id=999, virt_id=1)
        assert kit.err(uapi.IOMMU_VDEVICE_ALLOC, c) == errno.ENOENT
    c = new("iommu_veventq_alloc", viommu_id=ioas, type=1, veventq_depth=1, __reserved=1)
    assert kit.err(uapi.IOMMU_VEVENTQ_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_veventq_alloc", viommu_id=ioas, type=uapi.IOMMU_VEVENTQ_TYPE_DEFAULT, veventq_depth=0)
    assert kit.err(uapi.IOMMU_VEVENTQ_ALLOC, c) == errno.EOPNOTSUPP
    for depth in (0, (1 << 19) + 1):
        c = new("iommu_veventq_alloc", viommu_id=ioas, type=1, veventq_depth=depth)
        assert kit.err(uapi.IOMMU_VEVENTQ_ALLOC, c) == errno.EINVAL
    c = new("iommu_veventq_alloc", viommu_id=ioas, type=1, veventq_depth=1 << 19)
    assert kit.err(uapi.IOMMU_VEVENTQ_ALLOC, c) == errno.ENOENT
    c = new("iommu_hw_queue_alloc", viommu_id=ioas, flags=1, type=1, length=4096)
    assert kit.err(uapi.IOMMU_HW_QUEUE_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_hw_queue_alloc", viommu_id=ioas, type=1, length=0)
    assert kit.err(uapi.IOMMU_HW_QUEUE_ALLOC, c) == errno.EINVAL
    c = new("iommu_hw_queue_alloc", viommu_id=ioas, type=1, nesting_parent_iova=1 << 63, length=(1 << 63) + 1)
    assert kit.err(uapi.IOMMU_HW_QUEUE_ALLOC, c) == errno.EOVERFLOW
    c = new("iommu_hw_queue_alloc", viommu_id=ioas, type=1, length=4096)
    assert kit.err(uapi.IOMMU_HW_QUEUE_ALLOC, c) == errno.ENOENT
    assert set(kit.ctx.objects) == {ioas, dev_id, parent}


def test_ioas_change_process(kit, tmp_path):
    from devfs.client import Buffer
    c = new("iommu_ioas_change_process", __reserved=1)
    assert kit.err(uapi.IOMMU_IOAS_CHANGE_PROCESS, c) == errno.EOPNOTSUPP
    kit.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, new("iommu_ioas_change_process"))   # nothing to move
    ioas = kit.ioas()
    kit.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, new("iommu_ioas_change_process"))
    b = Buffer(4096)
    iova = kit.map(ioas, b.va, 4096)
    assert kit.err(uapi.IOMMU_IOAS_CHANGE_PROCESS, new("iommu_ioas_change_process")) == errno.EINVAL
    u = new("iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=4096)
    kit.ioctl(uapi.IOMMU_IOAS_UNMAP, u)
    kit.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, new("iommu_ioas_change_process"))
    b.close()
