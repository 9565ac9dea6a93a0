"""Integration tests: a real mount (server in a subprocess) driven by separate
client processes, Python and C, with real memory and real fds.

Every client here is its own process: the server reads and writes its memory
with process_vm_readv/writev exactly as for any user.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import build_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = "0000:00:03.0"


def run_py(code, *args, timeout=60, check=True):
    """Run ``code`` in a new Python process with the repo importable.

    Returns the CompletedProcess; with ``check`` a non-zero exit fails the
    test with the client's output.
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"client failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def server_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def c_client(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("cbin"), "client")


def test_c_client_full_sequence(mount, c_client):
    p = subprocess.run([c_client, mount.path, PLAIN, "vfio0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "done"
    assert "ok device DMA landed in the client's memory" in lines
    assert "ok ranges exclude the MSI window and the aperture" in lines
    assert len([l for l in lines if l.startswith("ok ")]) == 21


@pytest.mark.parametrize("mode", [[], ["--frames"]])
def test_demo_runs_qemu_sequence(mount, mode):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/demo_qemu.py"), mount.path, *mode],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.rstrip().endswith("OK")
    assert "pattern found in the client's own buffer" in p.stdout


def test_frames_only_client(mount):
    """A client that only writes and reads bytes, built from DESIGN.md alone."""
    run_py("""
        import errno, os, struct, sys
        mnt = sys.argv[1]
        fd = os.open(mnt + "/iommu", os.O_RDWR)
        def call(cmd, arg, read=4096):
            os.write(fd, struct.pack("<4sIII", b"IOFS", cmd, len(arg), 0) + arg)
            rep = os.read(fd, read)
            magic, result, alen, elen = struct.unpack_from("<4siII", rep)
            assert magic == b"IOFS" and elen == 0
            return result, rep[16:16 + alen]
        r, arg = call(0x3b81, struct.pack("<III", 12, 0, 0))          # IOAS_ALLOC
        assert r == 0 and struct.unpack("<III", arg) == (12, 0, 1), (r, arg)
        r, arg = call(0x3b81, struct.pack("<IIII", 16, 0, 0, 5))      # non-zero tail
        assert r == -errno.E2BIG, r
        r, arg = call(0x3b81, struct.pack("<I", 12))                  # size says 12, 4 bytes sent
        assert r == -errno.EFAULT, r
        r, arg = call(0x3b81, struct.pack("<II", 8, 0))               # below the minimum
        assert r == -errno.EINVAL, r
        r, arg = call(0x3b81 | 0x40000000, struct.pack("<III", 12, 0, 0))  # _IOW-encoded: ENOTTY
        assert r == -errno.ENOTTY, r
        # IOVA_RANGES with no room: EMSGSIZE, the count written back all the same.
        r, arg = call(0x3b84, struct.pack("<IIIIQQ", 32, 1, 0, 0, 0, 0))
        assert r == -errno.EMSGSIZE and struct.unpack_from("<I", arg, 8)[0] == 1, (r, arg)
        # A short IOAS_ALLOC struct: only the bytes sent come back.
        r, arg = call(0x3b85, struct.pack("<IIIIQQQ", 40, 4 | 1, 1, 0, 0, 4096, 1 << 20))  # lazy map of VA 0
        assert r == 0, r
        r, arg = call(0x3b86, struct.pack("<IIQQ", 24, 1, 0, (1 << 64) - 1))   # unmap all
        assert r == 0 and struct.unpack_from("<Q", arg, 16)[0] == 4096, (r, arg)
        # Transport errors are errors of write()/read() themselves.
        def err(f):
            try:
                f()
            except OSError as e:
                return e.errno
            return 0
        assert err(lambda: os.write(fd, b"XXXX" + bytes(12))) == errno.EINVAL
        assert err(lambda: os.write(fd, struct.pack("<4sIII", b"IOFS", 0x3b81, 12, 1) + bytes(12))) == errno.EINVAL
        assert err(lambda: os.write(fd, struct.pack("<4sIII", b"IOFS", 0x3b81, 20, 0) + bytes(12))) == errno.EINVAL
        assert err(lambda: os.read(fd, 64)) == errno.ENOMSG
        os.write(fd, struct.pack("<4sIII", b"IOFS", 0x3b81, 12, 0) + struct.pack("<III", 12, 0, 0))
        assert err(lambda: os.write(fd, struct.pack("<4sIII", b"IOFS", 0x3b81, 12, 0) + struct.pack("<III", 12, 0, 0))) == errno.EBUSY
        assert err(lambda: os.read(fd, 8)) == errno.ERANGE
        rep = os.read(fd, 64)                     # the reply stayed
        assert struct.unpack_from("<4siIII", rep)[:3] == (b"IOFS", 0, 12) and rep[24:28] == struct.pack("<I", 2)
        print("frames ok")
    """, mount.path)


def test_ioctl_errnos_through_mount(mount):
    run_py("""
        import errno, os, sys
        from devfs.client import Iommufd, VfioDevice, Buffer
        from core import uapi
        from core.uapi import ffi
        mnt = sys.argv[1]
        fd = Iommufd(mnt)
        def err(f, *a, **k):
            try:
                f(*a, **k)
            except OSError as e:
                return e.errno
            raise AssertionError("succeeded")
        assert err(fd.ioctl, uapi.IOMMU_DESTROY, None) == errno.EFAULT
        assert err(fd.ioctl, 0x3b95, ffi.new("struct iommu_destroy *", {"size": 8})) == errno.ENOTTY
        assert err(fd.destroy, 1) == errno.ENOENT
        assert err(fd.ioas_alloc, flags=1) == errno.EOPNOTSUPP
        ioas = fd.ioas_alloc()
        buf = Buffer(1 << 20)
        assert err(fd.ioas_map, ioas, buf.va, 0, iova=0) == errno.EINVAL
        assert err(fd.ioas_map, ioas, buf.va, 4096, iova=0, flags=0) == errno.EINVAL
        assert fd.ioas_map(ioas, buf.va, 1 << 20, iova=1 << 20) == 1 << 20
        assert err(fd.ioas_map, ioas, buf.va, 4096, iova=1 << 20) == errno.EEXIST
        assert err(fd.ioas_unmap, ioas, 1 << 20, 4096) == errno.ENOENT
        assert err(fd.ioas_unmap, ioas, 8 << 20, 4096) == errno.ENOENT
        dev = VfioDevice(mnt, "vfio0")
        assert err(dev.attach, ioas) == errno.EINVAL          # before bind
        closed = os.open("/dev/null", os.O_RDONLY); os.close(closed)
        assert err(dev.bind, closed) == errno.EBADF          # not an open fd
        null = os.open("/dev/null", os.O_RDONLY)
        assert err(dev.bind, null) == errno.EBADFD           # not an iommufd
        dev_id = dev.bind(fd)
        assert err(fd.destroy, dev_id) == errno.EBUSY
        hwpt = dev.attach(ioas)
        assert err(fd.destroy, ioas) == errno.EBUSY
        ranges, align = fd.iova_ranges(ioas)
        assert align == 4096 and ranges == [(0, 0xfedfffff), (0xfef00000, (1 << 48) - 1)], ranges
        assert fd.ioas_unmap(ioas, 0, (1 << 64) - 1) == 1 << 20
        print("ok")
    """, mount.path)


def _holder_code():
    return """
        import os, sys, time
        from devfs.client import Iommufd, VfioDevice, DmaPort, Buffer
        mnt = sys.argv[1]
        fd = Iommufd(mnt)
        dev = VfioDevice(mnt, "vfio0")
        dev_id = dev.bind(fd)
        ioas = fd.ioas_alloc()
        dev.attach(fd.hwpt_alloc(dev_id, ioas))
        bufs = [Buffer(8 << 20) for _ in range(4)]
        for i, b in enumerate(bufs):
            fd.ioas_map(ioas, b.va, len(b), iova=(i + 1) << 30)
        DmaPort(mnt, "0000:00:03.0").write(1 << 30, b"held")
        assert bufs[0][:4] == b"held"
        print("holding", flush=True)
        if sys.argv[2] == "close":
            sys.stdin.readline()        # the test looks at the server first
            dev.sync_close(); fd.sync_close()
            print("closed", flush=True)
        else:
            time.sleep(600)
    """


def _wait_unbound(mount, deadline=10.0):
    """The device is free again when another process can bind it."""
    code = """
        import sys
        from devfs.client import Iommufd, VfioDevice
        fd = Iommufd(sys.argv[1]); dev = VfioDevice(sys.argv[1], "vfio0")
        print(dev.bind(fd))
    """
    end = time.monotonic() + deadline
    while True:
        p = run_py(code, mount.path, check=False)
        if p.returncode == 0:
            return int(p.stdout)
        assert time.monotonic() < end, p.stderr
        time.sleep(0.1)


def pidfds_on(server_pid, pid):
    """How many of the server's fds are pidfds of process ``pid`` (fdinfo's
    ``Pid:`` line): exact even while other tests' releases still land."""
    n = 0
    for fd in os.listdir(f"/proc/{server_pid}/fd"):
        try:
            with open(f"/proc/{server_pid}/fdinfo/{fd}") as f:
                if any(line.split() == ["Pid:", str(pid)] for line in f):
                    n += 1
        except OSError:
            pass
    return n


def fd_table(pid):
    """``fd -> (target, last fdinfo line)`` of process ``pid``, for failure messages."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[fd] = (os.readlink(f"/proc/{pid}/fd/{fd}"),
                       open(f"/proc/{pid}/fdinfo/{fd}").read().strip().splitlines()[-1])
        except OSError:
            pass
    return out


@pytest.mark.parametrize("how", ["close", "sigkill"])
def test_nothing_left_after_client_goes(mount, how):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_holder_code()), mount.path, how],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "holding", p.stderr.read()
    assert pidfds_on(mount.pid, p.pid) > 0, fd_table(mount.pid)   # the owner's pidfd is held
    if how == "close":
        p.stdin.write("close\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "closed"
        assert pidfds_on(mount.pid, p.pid) == 0  # synchronous close: gone already
        p.wait(10)
    else:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert _wait_unbound(mount) == 1             # a fresh context, IDs from 1 again
    end = time.monotonic() + 10
    while pidfds_on(mount.pid, p.pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert pidfds_on(mount.pid, p.pid) == 0


def test_context_refuses_another_uid(mount):
    run_py("""
        import errno, os, sys
        from devfs.client import Iommufd
        fd = Iommufd(sys.argv[1])
        ioas = fd.ioas_alloc()
        pid = os.fork()
        if pid == 0:
            os.setgid(1000); os.setuid(1000)
            try:
                fd.ioas_alloc()
                os._exit(1)
            except OSError as e:
                os._exit(0 if e.errno == errno.EACCES else 2)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0, st
        print("ok")
    """, mount.path)


def test_dma_of_another_uid_is_refused(mount):
    """uid 1000 drives the device's DMA engine at a root client's mapping: EACCES."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_holder_code()), mount.path, "sleep"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline().strip() == "holding"
        # Fork, then drop to uid 1000 (the interpreter under /root is not
        # executable by that uid, so no exec after setuid).
        p = run_py("""
            import errno, os, sys
            from devfs.client import DmaPort, DmaError
            pid = os.fork()
            if pid == 0:
                os.setgid(1000); os.setuid(1000)
                try:
                    DmaPort(sys.argv[1], "0000:00:03.0").write(1 << 30, b"evil")
                    os._exit(1)
                except DmaError as e:
                    os._exit(0 if e.errno == errno.EACCES else 2)
            _, st = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(st) == 0, st
            print("refused")
        """, mount.path)
        assert p.stdout.strip() == "refused"
    finally:
        holder.kill()
        holder.wait()
    _wait_unbound(mount)
