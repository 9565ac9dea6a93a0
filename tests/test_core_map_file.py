"""IOMMU_IOAS_MAP_FILE, core only (reference §7): a memfd or tmpfs file the
caller passes by fd (here: a duplicate in ``caller.fds``, as the transport
hands it over), its checks in the kernel's order, pages that outlive the
caller's own view, device DMA into the file, and MD_CHECK_MAP /
MD_CHECK_REFS comparing file pages with the caller's view of the file."""
import errno
import mmap
import os
import struct
import tempfile

import pytest

from core import uapi
from core.caller import Caller
from core.errors import UapiError
from core.files import CallerFile
from core.mm import filemem
from core.mm.usermem import MemArg
from core.wire import IODM_REQUEST as REQ

from corekit import addr, dma_request, new
from test_core_selftest import ST

PAGE = 4096
RW = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
FIXED = uapi.IOMMU_IOAS_MAP_FIXED_IOVA
FD = 11          # the fd number the tests give the file


@pytest.fixture
def st():
    k = ST()
    yield k
    k.close()


def memfd(size):
    fd = os.memfd_create("iommufs-test")
    os.ftruncate(fd, size)
    return fd


def map_file(st, ioas, fd, start, length, iova=0, flags=RW | FIXED, fdno=FD):
    c = new("iommu_ioas_map_file", flags=flags, ioas_id=ioas, fd=fdno, start=start,
            length=length, iova=iova)
    fds = {} if fd is None else {FD: CallerFile(os.dup(fd))}
    caller = Caller(st.caller.tid, st.caller.uid, st.caller.gid, fds=fds)
    st.iommufd.ioctl(caller, uapi.IOMMU_IOAS_MAP_FILE, MemArg(caller.mem, addr(c)))
    return c.iova


def err(fn, *a, **k):
    try:
        fn(*a, **k)
    except UapiError as e:
        return e.errno
    raise AssertionError("succeeded")


def test_map_file_rules_in_order(st):
    ioas = st.ioas()
    mfd = memfd(4 * PAGE)
    assert err(map_file, st, ioas, mfd, 0, PAGE, flags=RW | 0x100) == errno.EOPNOTSUPP
    assert err(map_file, st, ioas, mfd, 0, (1 << 64) - 1) == errno.EOVERFLOW
    assert err(map_file, st, ioas, mfd, 0, PAGE, flags=FIXED) == errno.EINVAL     # neither R nor W
    assert err(map_file, st, ioas + 1, mfd, 0, PAGE) == errno.ENOENT
    assert err(map_file, st, ioas, None, 0, PAGE) == errno.EBADF                   # not an open fd
    assert err(map_file, st, ioas, mfd, 0, PAGE, fdno=-1) == errno.EBADF
    assert err(map_file, st, ioas, mfd, 0, 0) == errno.EINVAL                       # length 0
    assert err(map_file, st, ioas, mfd, (1 << 64) - PAGE, 2 * PAGE) == errno.EOVERFLOW
    assert err(map_file, st, ioas, mfd, 0, 4 * PAGE + 1) == errno.EINVAL           # past the end
    assert err(map_file, st, ioas, mfd, 3 * PAGE, 2 * PAGE) == errno.EINVAL
    # A regular file: on tmpfs it is shmem and maps; on a disk filesystem the
    # kernel cannot pin its pages (EINVAL).
    for where in ("/dev/shm", os.path.dirname(os.path.abspath(__file__))):
        with tempfile.NamedTemporaryFile(dir=where) as f:
            f.truncate(PAGE)
            shmem = filemem.fs_type(f.fileno()) == filemem.TMPFS_MAGIC
            if shmem:
                iova = map_file(st, ioas, f.fileno(), 0, PAGE, flags=RW)
                st.unmap(ioas, iova, PAGE)
            else:
                assert err(map_file, st, ioas, f.fileno(), 0, PAGE) == errno.EINVAL
    ro = os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY)
    assert err(map_file, st, ioas, ro, 0, PAGE) == errno.EPERM                     # WRITEABLE, read-only fd
    assert map_file(st, ioas, ro, 0, PAGE, iova=0x10000, flags=uapi.IOMMU_IOAS_MAP_READABLE | FIXED) == 0x10000
    assert err(map_file, st, ioas, mfd, 0, PAGE, iova=0x10000) == errno.EEXIST
    # Without FIXED_IOVA the file offset, not an address, guides the alignment.
    iova = map_file(st, ioas, mfd, PAGE, 2 * PAGE, flags=RW)
    assert iova % PAGE == 0 and iova != 0
    os.ftruncate(mfd, 0)
    assert err(map_file, st, ioas, mfd, 0, PAGE, iova=0x40000) == errno.EINVAL    # after ftruncate
    os.close(ro)
    os.close(mfd)


def test_file_pages_outlive_the_callers_view_and_take_dma(st):
    ioas = st.ioas()
    vf, dev = st.bind("0000:00:03.0")
    st.attach(vf, ioas)
    mfd = memfd(8 * PAGE)
    view = mmap.mmap(mfd, 8 * PAGE, mmap.MAP_SHARED)
    view[PAGE:PAGE + 5] = b"hello"
    base = 0x200000
    assert map_file(st, ioas, mfd, PAGE, 4 * PAGE, iova=base) == base
    os.close(mfd)                                 # the file stays mapped by the server
    dev_obj = st.emu.devices["0000:00:03.0"]
    rep = dma_request(st.emu, dev_obj, st.caller, REQ.pack(b"IODM", 1, 0, 0, base, 5, 0))
    assert rep[24:29] == b"hello"
    rep = dma_request(st.emu, dev_obj, st.caller,
                      REQ.pack(b"IODM", 2, 0, 0, base + PAGE + 7, 3, 0) + b"dev")
    assert struct.unpack_from("<i", rep, 4)[0] == 0
    assert view[2 * PAGE + 7:2 * PAGE + 10] == b"dev"
    view.close()
    rep = dma_request(st.emu, dev_obj, st.caller, REQ.pack(b"IODM", 1, 0, 0, base + PAGE + 7, 3, 0))
    assert rep[24:27] == b"dev"
    # Only file memory may change process (§7).
    st.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, new("iommu_ioas_change_process"))


def test_md_check_map_and_refs_see_file_pages(st):
    ioas = st.ioas()
    _, hwpt, _ = st.mock_domain(ioas)
    mfd = memfd(8 * PAGE)
    view = mmap.mmap(mfd, 8 * PAGE, mmap.MAP_SHARED)
    va = addr_of(view)
    other = mmap.mmap(-1, 8 * PAGE, mmap.MAP_SHARED)
    ova = addr_of(other)
    assert st.refs(va, 8 * PAGE) == [0] * 8
    iova = map_file(st, ioas, mfd, PAGE + 2048, 2 * PAGE, flags=RW)
    assert st.check_map(hwpt, iova, 2 * PAGE, va + PAGE + 2048) == 0
    assert st.check_map(hwpt, iova, 2 * PAGE, va + PAGE) == errno.EINVAL
    assert st.check_map(hwpt, iova, 2 * PAGE, ova + PAGE + 2048) == errno.EINVAL
    assert st.refs(va, 8 * PAGE) == [0, 1, 1, 1, 0, 0, 0, 0]
    st.unmap(ioas, iova, 2 * PAGE)
    assert st.refs(va, 8 * PAGE) == [0] * 8
    view.close()
    other.close()
    os.close(mfd)


def addr_of(m):
    import ctypes
    buf = (ctypes.c_char * 1).from_buffer(m)
    a = ctypes.addressof(buf)
    del buf
    return a


def test_access_pages_checks_file_pages_against_the_callers_view(st):
    ioas = st.ioas()
    mfd = memfd(4 * PAGE)
    view = mmap.mmap(mfd, 4 * PAGE, mmap.MAP_SHARED)
    va = addr_of(view)
    iova = map_file(st, ioas, mfd, 0, 4 * PAGE, flags=RW)
    afile = st.create_access(ioas)
    st.access_pages(afile, iova, 4 * PAGE, uptr=va)
    anon = mmap.mmap(-1, 4 * PAGE)
    try:
        st.access_pages(afile, iova, 4 * PAGE, uptr=addr_of(anon))
        raise AssertionError("pinned")
    except UapiError as e:
        assert e.errno == errno.EBADE
    afile.close()
    anon.close()
    view.close()
    os.close(mfd)


def test_dmabuf_get_map_file_and_revoke(st):
    from core.iommufd.selftest import DmabufFile
    ioas = st.ioas()
    _, _, idev = st.mock_domain(ioas)
    for n in (0, 512 * PAGE + 1):
        assert st.test_err(uapi.IOMMU_TEST_OP_DMABUF_GET, dmabuf_get={"length": n}) == errno.EINVAL
    st.test(uapi.IOMMU_TEST_OP_DMABUF_GET, dmabuf_get={"length": 4 * PAGE - 100,
                                                       "open_flags": os.O_CLOEXEC})
    (dfile,) = st.last_caller.returned
    assert isinstance(dfile, DmabufFile) and dfile.dmabuf.size == 4 * PAGE

    def mapf(start, length, iova=0, flags=RW):
        c = new("iommu_ioas_map_file", flags=flags, ioas_id=ioas, fd=FD, start=start,
                length=length, iova=iova)
        caller = Caller(st.caller.tid, st.caller.uid, st.caller.gid, fds={FD: dfile})
        st.iommufd.ioctl(caller, uapi.IOMMU_IOAS_MAP_FILE, MemArg(caller.mem, addr(c)))
        return c.iova

    assert err(mapf, 0, 0) == errno.EINVAL
    assert err(mapf, 4 * PAGE, 4 * PAGE) == errno.EINVAL
    assert err(mapf, 0, 4 * PAGE + 1) == errno.EINVAL
    iova = mapf(0, 4 * PAGE)

    def revoke(fd, revoked, fds):
        st.test(uapi.IOMMU_TEST_OP_DMABUF_REVOKE, fds=fds,
                dmabuf_revoke={"dmabuf_fd": fd, "revoked": revoked})

    assert st.test_err(uapi.IOMMU_TEST_OP_DMABUF_REVOKE, fds={},
                       dmabuf_revoke={"dmabuf_fd": FD, "revoked": 1}) == errno.EBADF
    assert st.test_err(uapi.IOMMU_TEST_OP_DMABUF_REVOKE, fds={},
                       dmabuf_revoke={"dmabuf_fd": -1, "revoked": 1}) == errno.EBADF
    assert st.test_err(uapi.IOMMU_TEST_OP_DMABUF_REVOKE, fds={FD: errno.EBADFD},
                       dmabuf_revoke={"dmabuf_fd": FD, "revoked": 1}) == errno.EINVAL
    revoke(FD, 1, {FD: dfile})
    st.hwpt(idev, ioas)                        # a domain joins with the revoked buffer mapped
    assert err(mapf, 0, 4 * PAGE) == errno.ENODEV
    revoke(FD, 0, {FD: dfile})
    iova2 = mapf(0, 4 * PAGE)
    st.unmap(ioas, iova, 4 * PAGE)
    assert mapf(0, 4 * PAGE, iova=iova, flags=RW | FIXED) == iova
    assert iova2 != iova
    dfile.close()
