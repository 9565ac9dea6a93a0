"""Every ioctl the "Implemented ioctls" table of docs/nodes.md claims reaches its
handler through the emulator's real tables: a number left out of a table
would answer what an unknown number answers (ENOTTY; EOPNOTSUPP for an
IOMMU_TEST_CMD op), so each claimed number is called with an argument its
handler refuses or accepts, and must get anything else."""
import errno
import pathlib
import re

import pytest

from core import uapi
from core.errors import UapiError
from core.uapi import ffi

from corekit import Kit, addr, new

NODES_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "nodes.md"


def claimed():
    """{row label: [ioctl names]} from docs/nodes.md's table (test ops as
    ``IOMMU_TEST_OP_<NAME>``)."""
    text = NODES_DOC.read_text()
    section = text[text.index("## Implemented ioctls"):]
    rows = {}
    for line in section.splitlines()[4:]:
        if not line.startswith("|"):
            break
        _, label, cell, _ = line.split("|")
        cell = re.sub(r"\([^)]*\)", "", cell)
        head, _, ops = cell.partition(":")
        names = [n.strip() for n in re.split(r",| and ", head) if n.strip()]
        names += [f"IOMMU_TEST_OP_{n.strip()}" for n in ops.split(",") if n.strip()]
        rows[label.strip()] = names
    return rows


ROWS = claimed()
IOMMU = [n for label, names in ROWS.items() if label.startswith("`iommu`") for n in names
         if not n.startswith("IOMMU_TEST_OP_")]
TEST_OPS = [n for names in ROWS.values() for n in names if n.startswith("IOMMU_TEST_OP_")]
VFIO = ROWS["`vfio/devices/vfioN`"]


def test_the_table_is_read():
    assert "IOMMU_IOAS_MAP" in IOMMU and "VFIO_IOMMU_UNMAP_DMA" in IOMMU
    assert "IOMMU_TEST_OP_PASID_CHECK_HWPT" in TEST_OPS and "VFIO_DEVICE_FEATURE" in VFIO
    assert len(IOMMU) == 28 and len(TEST_OPS) == 21 and len(VFIO) == 11


def _errno(fn):
    try:
        fn()
    except UapiError as e:
        return e.errno
    return 0


def test_an_unclaimed_number_is_what_the_check_would_see():
    kit = Kit()
    c = new("iommu_destroy")
    c.size = 0
    assert _errno(lambda: kit.ioctl(0x3B9F, c)) == errno.ENOTTY


@pytest.mark.parametrize("name", IOMMU)
def test_iommufd_number_reaches_its_handler(name):
    kit = Kit()
    cmd = getattr(uapi, name)
    # size/argsz 0: below every minimum (EINVAL) where a struct is read; an
    # integer argument of 0 for the type1 calls that take one.
    blob = ffi.new("char[]", 4096)
    assert _errno(lambda: kit.ioctl_int(cmd, addr(blob))) != errno.ENOTTY
    kit.close()


@pytest.mark.parametrize("name", TEST_OPS)
def test_selftest_op_reaches_its_handler(name):
    kit = Kit()
    c = new("iommu_test_cmd", op=getattr(uapi, name))
    assert _errno(lambda: kit.ioctl(uapi.IOMMU_TEST_CMD, c)) not in (errno.ENOTTY, errno.EOPNOTSUPP)
    kit.close()


@pytest.mark.parametrize("name", VFIO)
def test_vfio_number_reaches_its_handler(name):
    kit = Kit()
    cmd = getattr(uapi, name)
    if cmd != uapi.VFIO_DEVICE_BIND_IOMMUFD:
        vf, _ = kit.bind("0000:00:03.0")
    else:
        vf = kit.open_vfio("0000:00:03.0")
    blob = ffi.new("char[]", 4096)      # argsz 0: EINVAL in every handler
    assert _errno(lambda: kit.vfio(vf, cmd, blob)) != errno.ENOTTY
    kit.close()
