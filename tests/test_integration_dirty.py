"""Dirty tracking through a real mount (reference §9.3, QEMU's migration
path, §14 step 10): a client in its own process makes a DIRTY_TRACKING HWPT
for a topology device, the device writes through its ``dma`` node, and
IOMMU_HWPT_GET_DIRTY_BITMAP reports exactly the pages written, in the
client's memory at an unaligned address, by ioctl() and by frames."""
import pytest

from test_integration import run_py


@pytest.mark.parametrize("frames", [False, True])
def test_dma_writes_then_get_dirty_bitmap(mount, frames):
    run_py("""
        import errno, sys
        from devfs.client import Iommufd, VfioDevice, DmaPort, Buffer
        from core import uapi
        from core.uapi import ffi
        mnt, frames = sys.argv[1], sys.argv[2] == "True"
        PAGE = 4096
        fd = Iommufd(mnt, frames=frames)
        dev = VfioDevice(mnt, "0000:00:03.0", frames=frames)
        dev_id = dev.bind(fd)
        ioas = fd.ioas_alloc()
        c = ffi.new("struct iommu_hwpt_alloc *", {"size": 48, "dev_id": dev_id, "pt_id": ioas,
                    "flags": uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING})
        fd.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
        hwpt = c.out_hwpt_id
        assert dev.attach(hwpt) == hwpt
        ram = Buffer(256 * PAGE)
        base = 1 << 30
        fd.ioas_map(ioas, ram.va, len(ram), iova=base)
        s = ffi.new("struct iommu_hwpt_set_dirty_tracking *", {"size": 16, "hwpt_id": hwpt, "flags": 1})
        fd.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, s)
        port = DmaPort(mnt, "0000:00:03.0")
        written = [0, 7, 8, 100, 255]
        for p in written:
            port.write(base + p * PAGE + 123, b"dirty")
        port.write(base + 50 * PAGE - 2, b"xyzw")            # pages 49 and 50
        assert bytes(ram[7 * PAGE + 123:7 * PAGE + 128]) == b"dirty"
        bm = Buffer(PAGE)
        for no_clear in (1, 0, 0):
            bm[0:64] = bytes(64)
            g = ffi.new("struct iommu_hwpt_get_dirty_bitmap *", {"size": 48, "hwpt_id": hwpt,
                        "flags": no_clear, "iova": base, "length": len(ram), "page_size": PAGE,
                        "data": bm.va + 5})
            fd.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, g)
            v = int.from_bytes(bytes(bm[5:5 + 32]), "little")
            got = [k for k in range(256) if v >> k & 1]
            assert bytes(bm[0:5]) == bytes(5)
            if got:
                assert got == sorted(written + [49, 50]), got
        assert got == []                                     # the read before cleared
        def err(f, *a):
            try:
                f(*a)
            except OSError as e:
                return e.errno
            raise AssertionError("succeeded")
        g.page_size = 0
        assert err(fd.ioctl, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, g) == errno.EINVAL
        print("ok")
    """, mount.path, frames)
