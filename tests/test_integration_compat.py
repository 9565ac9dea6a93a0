"""VFIO type1 compatibility through a real mount (reference §11.4, §7
IOMMU_VFIO_IOAS), driven by separate client processes: a C program that
does what a legacy type1 user does, and the Python client in both its
ioctl() and frame modes."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import build_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = "0000:00:03.0"


@pytest.fixture(scope="module")
def compat_client(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("cbin"), "compat_client")


def test_c_type1_user(mount, compat_client):
    p = subprocess.run([compat_client, mount.path, PLAIN, "vfio0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "done"
    for must in ("ok GET_API_VERSION = 0",
                 "ok CHECK_EXTENSION(TYPE1v2) = 1",
                 "ok capability chain: DMA_AVAIL U32_MAX, IOVA ranges around the MSI window",
                 "ok device DMA landed in the client's buffer",
                 "ok UNMAP_DMA partial (v2) -> ENOENT",
                 "ok the pieces still translate, the hole faults"):
        assert must in lines
    assert len([l for l in lines if l.startswith("ok ")]) == 41


@pytest.mark.parametrize("frames", [False, True])
def test_python_client_compat(mount, frames):
    code = """
        import errno, sys
        from core import uapi
        from devfs.client import Buffer, DmaPort, Iommufd, VfioDevice
        mnt, frames = sys.argv[1], sys.argv[2] == "1"
        fd = Iommufd(mnt, frames=frames)
        def err(f, *a, **k):
            try:
                f(*a, **k)
            except OSError as e:
                return e
            raise AssertionError("succeeded")
        assert fd.get_api_version() == 0
        assert fd.check_extension(uapi.VFIO_TYPE1v2_IOMMU) == 1
        assert fd.check_extension(uapi.VFIO_NOIOMMU_IOMMU) == 0
        assert err(fd.check_extension, uapi.VFIO_DMA_CC_IOMMU).errno == errno.ENODEV
        assert err(fd.vfio_ioas, uapi.IOMMU_VFIO_IOAS_GET).errno == errno.ENODEV
        ioas = fd.ioas_alloc()
        fd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, ioas)
        assert fd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET) == ioas
        assert err(fd.set_iommu, 2).errno == errno.EINVAL
        fd.set_iommu(uapi.VFIO_TYPE1_IOMMU)
        assert fd.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, ioas) == 0
        info = fd.iommu_get_info()
        assert info["argsz"] == 72 and info["cap_offset"] == 24 and info["dma_avail"] == 0xFFFFFFFF
        assert info["iova_ranges"] == [(0, (1 << 64) - 1)]
        dev = VfioDevice(mnt, "vfio0", frames=frames)
        dev.bind(fd)
        dev.attach(ioas)
        info = fd.iommu_get_info()
        assert info["argsz"] == 88 and info["iova_pgsizes"] == 4096 | (2 << 20) | (1 << 30)
        assert info["iova_ranges"] == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
        buf = Buffer(8 * 4096)
        fd.map_dma(buf.va, 0x100000, len(buf))
        assert err(fd.map_dma, buf.va, 0x100000, 4096).errno == errno.EEXIST
        assert fd.unmap_dma(0x102000, 2 * 4096) == 2 * 4096           # type1 v1: split
        port = DmaPort(mnt, "0000:00:03.0")
        port.write(0x100000 + 5, b"front")
        port.write(0x107000, b"back")
        assert buf[5:10] == b"front" and buf[0x7000:0x7004] == b"back"
        e = err(fd.unmap_dma, 0x100800, 4096)
        assert e.errno == errno.EINVAL and e.unmapped == 4096          # nothing written back
        assert fd.unmap_dma(0, 0, flags=uapi.VFIO_DMA_UNMAP_FLAG_ALL) == 6 * 4096
        assert fd.unmap_dma(0x100000, 4096) == 0
        fd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_CLEAR)
        assert err(fd.iommu_get_info).errno == errno.ENODEV
        dev.close()
        fd.sync_close()
        print("compat ok")
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mount.path, "1" if frames else "0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "compat ok"
