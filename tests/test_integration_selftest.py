"""IOMMU_TEST_CMD through a real mount (reference §12, §13), driven by
separate client processes: a C program written like the kernel's iommufd
selftests (its own struct declarations, real ioctl(), the access and fault
fds opened from the nodes IOMMUFS_FD_PATH names, as the preload shim does),
and the Python client in its ioctl() and frame modes."""
import os
import select
import subprocess
import sys
import textwrap

import pytest

from conftest import build_c, client_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def selftest_client(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("cbin"), "selftest_client")


def test_c_selftest_sequence(mount, selftest_client):
    p = subprocess.run([selftest_client, mount.path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    for must in ("ok IOVA_RANGES: one range [0x1000000, 0x7fffffff], alignment 2048",
                 "ok MD_CHECK_MAP: the mock domain maps the buffer",
                 "ok MD_CHECK_REFS = 1 while the domain holds it",
                 "ok open the access node named by IOMMUFS_FD_PATH",
                 "ok ACCESS_RW write lands in the buffer, across a page",
                 "ok ACCESS_PAGES with a closed fd = EBADFD",
                 "ok the record: LAST_PAGE, device, grpid, perm, addr, cookie 1",
                 "ok PASID_ATTACH 7",
                 "ok MD_CHECK_REFS = 0 after unmap",
                 "ok close the iommufd"):
        assert must in lines, p.stdout
    n = len([line for line in lines if line.startswith("ok ")])
    assert lines[-1] == f"checks {n}" and n == 59


@pytest.mark.parametrize("frames", [False, True])
def test_python_client_selftest(mount, frames):
    code = """
        import errno, os, stat, sys
        from core import uapi
        from devfs.client import Buffer, Iommufd, Selftest
        mnt, frames = sys.argv[1], sys.argv[2] == "1"
        def err(f, *a, **k):
            try:
                f(*a, **k)
            except OSError as e:
                return e.errno
            raise AssertionError("succeeded")
        fd = Iommufd(mnt, frames=frames)
        st = Selftest(fd)
        ioas = fd.ioas_alloc()
        stdev, hwpt, idev = st.mock_domain(ioas)
        assert fd.iova_ranges(ioas) == ([(0x1000000, 0x7FFFFFFF)], 2048)
        buf = Buffer(8 * 4096)
        iova = fd.ioas_map(ioas, buf.va, len(buf))
        st.md_check_map(hwpt, iova, len(buf), buf.va)
        st.md_check_refs(buf.va, len(buf), 1)
        assert err(st.md_check_refs, buf.va, len(buf), 2) == errno.EIO
        acc = st.create_access(ioas)
        st_ = os.stat(acc.path)
        assert os.path.basename(acc.path).startswith("access-") and stat.S_IMODE(st_.st_mode) == 0o600
        acc.write(iova + 4090, b"across")
        assert buf[4090:4096] == b"across" and acc.read(iova + 4090, 6, slow_path=True) == b"across"
        item = acc.pages(iova + 4096, 4096, buf.va + 4096)
        assert err(acc.pages, iova, 4096, buf.va + 4096) == errno.EBADE
        assert err(st.cmd, uapi.IOMMU_TEST_OP_ACCESS_RW, fd.fileno(),
                   access_rw={"iova": iova, "length": 1, "uptr": buf.va}) == errno.EBADFD
        # Unmapping pinned IOVA: the access is told and lets go.
        assert fd.ioas_unmap(ioas, iova, len(buf)) == len(buf)
        assert err(acc.destroy_pages, item) == errno.ENOENT
        st.md_check_refs(buf.va, len(buf), 0)
        assert err(fd.destroy, ioas) == errno.EBUSY
        path = acc.path
        acc.close()
        assert not os.path.exists(path)
        st.add_reserved(ioas, 0x2000000, 0x1000)
        assert err(fd.ioas_map, ioas, buf.va, 4096, iova=0x2000000) == errno.EINVAL
        fd.destroy(stdev)
        assert err(fd.destroy, idev) == errno.ENOENT
        fd.destroy(ioas)
        fd.sync_close()
        print("selftest ok")
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mount.path, "1" if frames else "0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "selftest ok"


def test_access_fd_polls_readable_and_writable(mount):
    """poll() of an access fd answers what the VFS answers for a file
    without poll (the kernel's anonymous access file), not an error; the
    fuzz test found it failing with an exception in core."""
    code = """
        import select, sys
        from devfs.client import Iommufd, Selftest
        fd = Iommufd(sys.argv[1])
        acc = Selftest(fd).create_access(fd.ioas_alloc())
        p = select.poll()
        p.register(acc.fileno(), select.POLLIN | select.POLLOUT)
        print(p.poll(0))
        acc.close()
        fd.sync_close()
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mount.path],
                       capture_output=True, text=True, env=client_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    revents = eval(p.stdout)[0][1]
    assert revents & (select.POLLIN | select.POLLOUT) == select.POLLIN | select.POLLOUT, revents
    assert not revents & (select.POLLERR | select.POLLNVAL), revents
    assert "Traceback" not in mount.log_text()


def test_access_op_with_an_fd_past_int_max_is_ebadfd(mount):
    """IOMMU_TEST_CMD's access ``id`` is a u32 fd number; one past INT_MAX
    (0xffffffff) is no open fd: EBADFD, as for any (the selftest's
    iommufd_access_get), not an exception in the server's fd resolution
    (found by the fuzz test)."""
    code = """
        import ctypes, errno, os, sys
        from core import uapi
        from core.uapi import ffi
        from devfs.client import Iommufd
        fd = Iommufd(sys.argv[1])
        c = ffi.new("struct iommu_test_cmd *")
        c.size = ffi.sizeof(c[0])
        c.op = uapi.IOMMU_TEST_OP_ACCESS_RW
        c.id = int(sys.argv[2])
        try:
            fd.ioctl(uapi.IOMMU_TEST_CMD, c)
            print(0)
        except OSError as e:
            print(e.errno)
        fd.sync_close()
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mount.path, str(0xFFFFFFFF)],
                       capture_output=True, text=True, env=client_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == 77, p.stdout                              # EBADFD
    assert "Traceback" not in mount.log_text()
