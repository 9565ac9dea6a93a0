"""IOMMU_IOAS_MAP_FILE through a real mount (reference §7): the client
passes a memfd by fd number, the server takes it with pidfd_getfd, and the
device's DMA reaches the file's pages even after the client has closed the
fd and unmapped its own view; a bad fd is EBADF, by ioctl() and by frames."""
import pytest

from test_integration import run_py


@pytest.mark.parametrize("frames", [False, True])
def test_map_file_of_a_memfd(mount, frames):
    run_py("""
        import errno, mmap, os, sys
        from devfs.client import Iommufd, VfioDevice, DmaPort
        from core import uapi
        from core.uapi import ffi
        mnt, frames = sys.argv[1], sys.argv[2] == "True"
        PAGE = 4096
        fd = Iommufd(mnt, frames=frames)
        dev = VfioDevice(mnt, "0000:00:03.0", frames=frames)
        dev.bind(fd)
        ioas = fd.ioas_alloc()
        dev.attach(ioas)
        mfd = os.memfd_create("guest-ram")
        os.ftruncate(mfd, 16 * PAGE)
        view = mmap.mmap(mfd, 16 * PAGE, mmap.MAP_SHARED)
        view[4 * PAGE:4 * PAGE + 6] = b"memfd!"
        flags = (uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
                 | uapi.IOMMU_IOAS_MAP_WRITEABLE)
        c = ffi.new("struct iommu_ioas_map_file *", {"size": 40, "flags": flags, "ioas_id": ioas,
                    "fd": mfd, "start": 4 * PAGE, "length": 8 * PAGE, "iova": 1 << 24})
        fd.ioctl(uapi.IOMMU_IOAS_MAP_FILE, c)
        assert c.iova == 1 << 24
        port = DmaPort(mnt, "0000:00:03.0")
        assert port.read(1 << 24, 6) == b"memfd!"
        port.write((1 << 24) + PAGE, b"from the device")
        assert view[5 * PAGE:5 * PAGE + 15] == b"from the device"
        view.close()
        os.close(mfd)
        assert port.read((1 << 24) + PAGE, 15) == b"from the device"   # the pages stay
        closed = os.open("/dev/null", os.O_RDONLY); os.close(closed)
        c.fd, c.iova = closed, 2 << 24
        try:
            fd.ioctl(uapi.IOMMU_IOAS_MAP_FILE, c)
            raise AssertionError("mapped a closed fd")
        except OSError as e:
            assert e.errno == errno.EBADF, e
        print("ok")
    """, mount.path, frames)
