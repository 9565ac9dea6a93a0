"""Transport tests: a real mount, driven by separate client processes.

Most tests use ``fake_mount`` (tests/fake_emulator.py), so they see exactly
what devfs hands to core. Clients are Python subprocesses (``run_py``) or a
small C program (``tclient``: tests/c/transport_client.c, compiled once per
module into a tmp dir) where signals and blocking calls must not be hidden by
Python.

The deferred path is exercised with the fake's FAKE_BLOCK command: its core
call raises core.files.Wait on a pipe that only FAKE_UNBLOCK makes
readable, which devfs hands to trio; the tests that
block use a mount of their own (``mount_factory``) since FAKE_UNBLOCK is for
good.
"""
import errno
import json
import mmap
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from core import wire
from conftest import FAKE, ROOT, build_c, client_env, kill_pid, server_children, start_server, stop_server
from fake_emulator import (FAKE_BLOCK, FAKE_CLOSED, FAKE_CRASH, FAKE_DOUBLE, FAKE_ERRNO,
                           FAKE_SUM, FAKE_UNBLOCK, FAKE_WHO)

NULL, SYNC_CLOSE, WHOAMI = 0xF500, 0xF501, 0xF502
BIND = 0x3B76

# Shared by the Python clients: frames, ioctl through ctypes on a real buffer.
PRELUDE = """
import ctypes, errno, os, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
def ioctl(fd, cmd, buf=None):
    r = libc.ioctl(fd, cmd, ctypes.addressof(buf) if buf is not None else None)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def ioctl_addr(fd, cmd, addr):
    r = libc.ioctl(fd, cmd, addr)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def frame(fd, cmd, arg=b"", read=4096):
    from core import wire
    os.write(fd, wire.IOFS_REQUEST.pack(wire.IOFS_MAGIC, cmd, len(arg), 0) + arg)
    rep = os.read(fd, read)
    magic, result, alen, elen = wire.IOFS_REPLY.unpack_from(rep)
    assert magic == wire.IOFS_MAGIC and len(rep) == 16 + alen + elen, rep
    return result, rep[16:16 + alen]
def err(f, *a):
    try:
        f(*a)
    except OSError as e:
        return e.errno
    return 0
"""


def run_py(code, *args, setup="", timeout=60, check=True):
    """Run ``code`` (after PRELUDE and ``setup``) in a new Python process; returns stdout."""
    p = subprocess.run([sys.executable, "-c", PRELUDE + setup + textwrap.dedent(code), *map(str, args)],
                       capture_output=True, text=True, env=client_env(), timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"client failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def frame_bytes(cmd, arg=b"", flags=0, arg_len=None):
    return wire.IOFS_REQUEST.pack(wire.IOFS_MAGIC, cmd, len(arg) if arg_len is None else arg_len, flags) + arg


def oserr(f, *a):
    try:
        f(*a)
    except OSError as e:
        return e.errno
    return 0


@pytest.fixture(scope="module")
def tclient():
    d = tempfile.mkdtemp(prefix="iommufs-tclient-")
    exe = build_c(d, "transport_client")
    os.chmod(d, 0o755)
    yield exe
    os.unlink(exe)
    os.rmdir(d)


# -- the node tree ---------------------------------------------------------------------

def test_node_tree(fake_mount):
    mnt = fake_mount.path
    assert sorted(os.listdir(mnt)) == ["devices", "fds", "iommu", "vfio"]
    assert os.listdir(mnt + "/fds") == []
    assert os.listdir(mnt + "/vfio") == ["devices"]
    assert os.listdir(mnt + "/vfio/devices") == ["vfio0", "vfio1", "vfio10"]
    assert os.listdir(mnt + "/devices") == ["0000:00:03.0", "0000:00:04.0", "mdev0"]
    assert sorted(os.listdir(mnt + "/devices/mdev0")) == ["dma", "driver", "info"]
    modes = {p: stat.S_IMODE(os.stat(mnt + p).st_mode) for p in
             ("", "/iommu", "/vfio", "/vfio/devices/vfio0", "/devices/0000:00:03.0",
              "/devices/0000:00:03.0/dma", "/devices/0000:00:03.0/info",
             "/devices/0000:00:03.0/driver")}
    assert modes == {"": 0o755, "/iommu": 0o666, "/vfio": 0o755, "/vfio/devices/vfio0": 0o666,
                     "/devices/0000:00:03.0": 0o755, "/devices/0000:00:03.0/dma": 0o666,
                     "/devices/0000:00:03.0/info": 0o444, "/devices/0000:00:03.0/driver": 0o666}
    st = os.stat(mnt + "/iommu")
    assert stat.S_ISREG(st.st_mode) and st.st_ino == 2 and st.st_uid == 0
    assert os.stat(mnt + "/vfio/devices/vfio10").st_ino == os.stat(mnt + "/vfio/devices/vfio10").st_ino
    with open(mnt + "/devices/mdev0/info") as f:
        assert json.load(f) == {"name": "mdev0", "vfio": "vfio10"}
    assert oserr(os.open, mnt + "/devices/mdev0/info", os.O_RDWR) == errno.EACCES
    assert oserr(os.stat, mnt + "/nothing") == errno.ENOENT
    assert oserr(os.open, mnt + "/vfio", os.O_RDWR) == errno.EISDIR
    fd = os.open(mnt + "/devices/mdev0/info", os.O_RDONLY)
    try:
        import fcntl
        assert oserr(fcntl.ioctl, fd, NULL) == errno.ENOTTY
    finally:
        os.close(fd)
    assert os.statvfs(mnt).f_namemax == 255


def test_ioctl_on_dma_node_is_enotty(fake_mount):
    import fcntl
    fd = os.open(fake_mount.path + "/devices/0000:00:03.0/dma", os.O_RDWR)
    try:
        assert oserr(fcntl.ioctl, fd, NULL) == errno.ENOTTY
        assert oserr(fcntl.ioctl, fd, FAKE_DOUBLE) == errno.ENOTTY
    finally:
        os.close(fd)


# -- ioctl() -------------------------------------------------------------------------------

def test_real_ioctl_reaches_core_with_the_callers_pointer(fake_mount):
    out = run_py("""
        fd = os.open(sys.argv[1] + "/iommu", os.O_RDWR)
        buf = ctypes.create_string_buffer(struct.pack("<IIQQ", 24, 0, 20, 0), 24)
        assert ioctl(fd, %d, buf) == 0
        assert struct.unpack("<IIQQ", buf.raw) == (24, 0, 20, 41), buf.raw
        # A pointer field: the server reads the caller's memory at it.
        data = ctypes.create_string_buffer(bytes(range(100)), 100)
        arg = ctypes.create_string_buffer(struct.pack("<IIQQ", 24, 100, ctypes.addressof(data), 0), 24)
        ioctl(fd, %d, arg)
        assert struct.unpack_from("<Q", arg.raw, 16)[0] == sum(range(100))
        # The same on a VFIO node.
        v = os.open(sys.argv[1] + "/vfio/devices/vfio1", os.O_RDWR)
        buf = ctypes.create_string_buffer(struct.pack("<IIQQ", 24, 0, 1, 0), 24)
        assert ioctl(v, %d, buf) == 0 and struct.unpack_from("<Q", buf.raw, 16)[0] == 3
        # Unreadable argument: core's EFAULT.
        assert err(ioctl_addr, fd, %d, 8) == errno.EFAULT
        print("ok")
    """ % (FAKE_DOUBLE, FAKE_SUM, FAKE_DOUBLE, FAKE_DOUBLE), fake_mount.path)
    assert out.strip() == "ok"


def test_errno_propagation(fake_mount):
    out = run_py("""
        fd = os.open(sys.argv[1] + "/iommu", os.O_RDWR)
        for e in (errno.ENOENT, errno.EOPNOTSUPP, errno.E2BIG, errno.EMSGSIZE, errno.EBUSY):
            buf = ctypes.create_string_buffer(struct.pack("<II", 8, e), 8)
            assert err(ioctl, fd, %d, buf) == e, e
            assert frame(fd, %d, struct.pack("<II", 8, e)) == (-e, struct.pack("<II", 8, e))
        assert err(ioctl, fd, 0x3b95, buf) == errno.ENOTTY             # core's ENOTTY
        assert err(ioctl, fd, 0x3b81 | 0x40000000) == errno.ENOTTY     # _IOW-encoded: devfs
        assert err(ioctl, fd, 0xF5FF) == errno.ENOTTY                  # unknown private
        assert err(ioctl, fd, %d) == errno.EPERM                       # WHOAMI: server only
        assert frame(fd, %d)[0] == -errno.EPERM
        assert frame(fd, 0xF5FF)[0] == -errno.ENOTTY
        assert frame(fd, 0x3b81 | 0x40000000, b"abcd") == (-errno.ENOTTY, b"abcd")
        print("ok")
    """ % (FAKE_ERRNO, FAKE_ERRNO, WHOAMI, WHOAMI), fake_mount.path)
    assert out.strip() == "ok"


def test_null_ioctl_and_null_frame(fake_mount, tclient):
    p = subprocess.run([tclient, "null", fake_mount.path + "/iommu", "1000"],
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.strip() == "ok", p.stderr
    p = subprocess.run([tclient, "null", fake_mount.path + "/vfio/devices/vfio0", "10"],
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.strip() == "ok", p.stderr
    out = run_py("""
        fd = os.open(sys.argv[1] + "/iommu", os.O_RDWR)
        assert ioctl(fd, 0xF500) == 0
        assert frame(fd, 0xF500) == (0, b"")
        print("ok")
    """, fake_mount.path)
    assert out.strip() == "ok"


def test_core_exception_is_eio_and_the_server_lives_on(fake_mount):
    out = run_py("""
        fd = os.open(sys.argv[1] + "/iommu", os.O_RDWR)
        assert err(ioctl, fd, %d) == errno.EIO
        assert frame(fd, %d)[0] == -errno.EIO
        buf = ctypes.create_string_buffer(struct.pack("<IIQQ", 24, 0, 1, 0), 24)
        assert ioctl(fd, %d, buf) == 0
        print("ok")
    """ % (FAKE_CRASH, FAKE_CRASH, FAKE_DOUBLE), fake_mount.path)
    assert out.strip() == "ok"
    assert "a bug in core" in fake_mount.log_text()


# -- frames ------------------------------------------------------------------------------

def test_frame_round_trip_and_every_transport_errno(fake_mount):
    fd = os.open(fake_mount.path + "/iommu", os.O_RDWR)
    try:
        arg = struct.pack("<IIQQ", 24, 0, 5, 0)
        assert os.write(fd, frame_bytes(FAKE_DOUBLE, arg)) == 16 + 24
        rep = os.read(fd, 4096)
        assert rep == struct.pack("<4siII", b"IOFS", 0, 24, 0) + struct.pack("<IIQQ", 24, 0, 5, 11)
        # EINVAL: bad magic, flags, lengths, short header.
        assert oserr(os.write, fd, b"XXXX" + frame_bytes(FAKE_DOUBLE, arg)[4:]) == errno.EINVAL
        assert oserr(os.write, fd, frame_bytes(FAKE_DOUBLE, arg, flags=1)) == errno.EINVAL
        assert oserr(os.write, fd, frame_bytes(FAKE_DOUBLE, arg, arg_len=25)) == errno.EINVAL
        assert oserr(os.write, fd, frame_bytes(FAKE_DOUBLE, arg, arg_len=23)) == errno.EINVAL
        assert oserr(os.write, fd, b"IOFS" + bytes(8)) == errno.EINVAL
        # Frames must arrive in one WRITE: at or past max_write (1 MiB), or
        # split by the kernel (a buffer spanning more than 256 pages), EINVAL.
        def sized(n):
            return frame_bytes(FAKE_DOUBLE, struct.pack("<IIQQ", 24, 0, 1, 0) + bytes(n - 16 - 24))
        assert oserr(os.write, fd, sized(1 << 20)) == errno.EINVAL
        assert oserr(os.write, fd, sized((1 << 20) + 4096)) == errno.EINVAL
        assert oserr(os.write, fd, sized(3 << 20)) == errno.EINVAL
        frame_1m = sized((1 << 20) - 1)
        buf = mmap.mmap(-1, 2 << 20)
        buf[100:100 + len(frame_1m)] = frame_1m
        assert oserr(os.write, fd, memoryview(buf)[100:100 + len(frame_1m)]) == errno.EINVAL  # 257 pages
        buf[:(1 << 20) - 1] = frame_1m
        assert os.write(fd, memoryview(buf)[:(1 << 20) - 1]) == (1 << 20) - 1   # 256 pages: whole
        # Reads are split the same way: a reply this large needs an aligned buffer.
        assert os.readv(fd, [buf]) == (1 << 20) - 1
        assert buf[4:8] == bytes(4) and buf[32:40] == struct.pack("<Q", 3)
        assert os.write(fd, sized((1 << 20) - 4096)) == (1 << 20) - 4096        # any alignment
        assert len(os.read(fd, 1 << 20)) == (1 << 20) - 4096
        # ENOMSG: nothing to read (and nothing was left by the errors above).
        assert oserr(os.read, fd, 4096) == errno.ENOMSG
        # EBUSY: a second request before the reply was read; the first reply stays.
        os.write(fd, frame_bytes(FAKE_DOUBLE, arg))
        assert oserr(os.write, fd, frame_bytes(FAKE_DOUBLE, struct.pack("<IIQQ", 24, 0, 7, 0))) == errno.EBUSY
        # ERANGE: a read smaller than the reply; the reply stays.
        assert oserr(os.read, fd, 39) == errno.ERANGE
        assert os.read(fd, 40)[16:] == struct.pack("<IIQQ", 24, 0, 5, 11)
        assert oserr(os.read, fd, 4096) == errno.ENOMSG
        # Core errors go in the result, with the argument as left.
        os.write(fd, frame_bytes(FAKE_DOUBLE, struct.pack("<II", 8, 0)))
        assert os.read(fd, 4096) == struct.pack("<4siII", b"IOFS", -errno.EINVAL, 8, 0) + struct.pack("<II", 8, 0)
        # Frame cmd 0: synchronous close; later frames and ioctls are EBADF.
        os.write(fd, frame_bytes(0))
        assert os.read(fd, 64) == struct.pack("<4siII", b"IOFS", 0, 0, 0)
        os.write(fd, frame_bytes(FAKE_DOUBLE, arg))
        assert struct.unpack_from("<i", os.read(fd, 4096), 4)[0] == -errno.EBADF
        import fcntl
        assert oserr(fcntl.ioctl, fd, FAKE_DOUBLE) == errno.EBADF
        assert oserr(fcntl.ioctl, fd, NULL) == errno.EBADF
    finally:
        os.close(fd)


def test_reply_slots_are_per_thread(fake_mount):
    out = run_py("""
        fd = os.open(sys.argv[1] + "/iommu", os.O_RDWR)
        who = struct.pack("<IIIIIIIi", 32, 0, 0, 0, 0, 0, 0, 0)
        go = [threading.Barrier(2) for _ in range(3)]
        res = {}
        def worker(name):
            go[0].wait()
            os.write(fd, struct.pack("<4sIII", b"IOFS", %d, 32, 0) + who)   # both write first
            go[1].wait()
            rep = os.read(fd, 4096)
            res[name] = (threading.get_native_id(), struct.unpack_from("<IIIIII", rep, 20)[0])
            go[2].wait()
            res[name + "-empty"] = err(os.read, fd, 4096)
        ts = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert res["a"][0] == res["a"][1] and res["b"][0] == res["b"][1], res
        assert res["a"][0] != res["b"][0]
        assert res["a-empty"] == res["b-empty"] == errno.ENOMSG
        print("ok")
    """ % FAKE_WHO, fake_mount.path)
    assert out.strip() == "ok"


def test_dma_frames_use_the_same_slots(fake_mount):
    fd = os.open(fake_mount.path + "/devices/0000:00:04.0/dma", os.O_RDWR)
    try:
        req = struct.pack("<4sIIIQII", b"IODM", 1, 0, 0, 0x1000, 8, 0)
        assert os.write(fd, req) == 32
        assert oserr(os.write, fd, req) == errno.EBUSY
        assert oserr(os.read, fd, 12 + 31) == errno.ERANGE
        assert os.read(fd, 4096) == b"IODM" + struct.pack("<iI", 0, 32) + req
        assert oserr(os.read, fd, 4096) == errno.ENOMSG
        whole = mmap.mmap(-1, 1 << 20)          # aligned: one WRITE of max_write bytes
        assert oserr(os.write, fd, whole) == errno.EINVAL
        big = struct.pack("<4sIIIQII", b"IODM", 2, 0, 0, 0x1000, 1 << 20, 0) + bytes(1 << 20)
        assert oserr(os.write, fd, big) == errno.EINVAL
        # The head of a split DMA write: fewer data bytes than its length says.
        short = struct.pack("<4sIIIQII", b"IODM", 2, 0, 0, 0x1000, 100, 0) + bytes(99)
        assert oserr(os.write, fd, short) == errno.EINVAL
        assert oserr(os.read, fd, 4096) == errno.ENOMSG
    finally:
        os.close(fd)


# -- the caller -----------------------------------------------------------------------------

WHO_CODE = """
def who(fd, frames=False):
    arg = struct.pack("<IIIIIIIi", 32, 0, 0, 0, 0, 0, 0, 0)
    if frames:
        r, out = frame(fd, %d, arg)
        assert r == 7, r
    else:
        buf = ctypes.create_string_buffer(arg, 32)
        assert ioctl(fd, %d, buf) == 7
        out = buf.raw
    return dict(zip(("tid", "uid", "gid", "tgid", "ctx", "nfds", "fd"), struct.unpack_from("<IIIIIIi", out, 4)))
""" % (FAKE_WHO, FAKE_WHO)


def test_caller_identity_tid_uid_and_fork(fake_mount):
    out = run_py("""
        mnt = sys.argv[1]
        fd = os.open(mnt + "/iommu", os.O_RDWR)
        w = who(fd)
        assert (w["tid"], w["tgid"], w["uid"], w["gid"]) == (os.getpid(), os.getpid(), 0, 0), w
        got = {}
        t = threading.Thread(target=lambda: got.update(who(fd, frames=True), me=threading.get_native_id()))
        t.start(); t.join()
        assert got["tid"] == got["me"] != os.getpid() and got["tgid"] == os.getpid(), got
        # A forked child is served as itself, with its own memory.
        data = ctypes.create_string_buffer(b"\\x01" * 64, 64)
        arg = ctypes.create_string_buffer(struct.pack("<IIQQ", 24, 64, ctypes.addressof(data), 0), 24)
        pid = os.fork()
        if pid == 0:
            ctypes.memset(data, 2, 64)           # copy-on-write: only the child's page changes
            ioctl(fd, %d, arg)
            w = who(fd)
            ok = struct.unpack_from("<Q", arg.raw, 16)[0] == 128 and w["tid"] == os.getpid()
            os._exit(0 if ok else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        ioctl(fd, %d, arg)
        assert struct.unpack_from("<Q", arg.raw, 16)[0] == 64
        # uid 1000: its own context, and EACCES on root's (the fake checks like core).
        pid = os.fork()
        if pid == 0:
            os.setgid(1000); os.setuid(1000)
            mine = os.open(mnt + "/iommu", os.O_RDWR)
            w = who(mine)
            ok = (w["uid"], w["gid"], w["tid"]) == (1000, 1000, os.getpid())
            ok = ok and err(who, fd) == errno.EACCES
            os._exit(0 if ok else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        print("ok")
    """ % (FAKE_SUM, FAKE_SUM), fake_mount.path, setup=WHO_CODE)
    assert out.strip() == "ok"


# -- fd resolution (VFIO_DEVICE_BIND_IOMMUFD) ------------------------------------------------

def test_bind_resolves_the_fd_to_its_context(fake_mount, mount_factory):
    other = mount_factory(emulator=FAKE)
    out = run_py("""
        mnt, other = sys.argv[1], sys.argv[2]
        def bind(dev, iommufd, frames=False):
            arg = struct.pack("<IIiI", 16, 0, iommufd, 0)
            if frames:
                r, out = frame(dev, 0x3b76, arg)
                if r < 0:
                    raise OSError(-r, os.strerror(-r))
                return struct.unpack_from("<I", out, 12)[0]
            buf = ctypes.create_string_buffer(arg, 16)
            ioctl(dev, 0x3b76, buf)
            return struct.unpack_from("<I", buf.raw, 12)[0]
        a = os.open(mnt + "/iommu", os.O_RDWR)
        b = os.open(mnt + "/iommu", os.O_RDWR)
        dev = os.open(mnt + "/vfio/devices/vfio0", os.O_RDWR)
        for frames in (False, True):
            assert bind(dev, a, frames) == who(a)["ctx"]
            assert bind(dev, b, frames) == who(b)["ctx"] != who(a)["ctx"]
            dup = os.dup(b)
            assert bind(dev, dup, frames) == who(b)["ctx"]       # same open file
            os.close(dup)
            closed = os.open("/dev/null", os.O_RDONLY); os.close(closed)
            assert err(bind, dev, closed, frames) == errno.EBADF
            null = os.open("/dev/null", os.O_RDONLY)
            assert err(bind, dev, null, frames) == errno.EBADFD
            dma = os.open(mnt + "/devices/0000:00:03.0/dma", os.O_RDWR)
            assert err(bind, dev, dma, frames) == errno.EBADFD   # this mount, not iommu
            foreign = os.open(other + "/iommu", os.O_RDWR)
            assert err(bind, dev, foreign, frames) == errno.EBADFD   # another mount's iommu
            # A thread binds with an fd of its process.
            res = []
            t = threading.Thread(target=lambda: res.append(bind(dev, a, frames)))
            t.start(); t.join()
            assert res == [who(a)["ctx"]]
        # An unreadable argument: no resolution, core reports EFAULT.
        assert err(ioctl_addr, dev, 0x3b76, 8) == errno.EFAULT
        # A synchronously closed context: EBADF.
        c = os.open(mnt + "/iommu", os.O_RDWR)
        ioctl(c, 0xF501)
        assert err(bind, dev, c) == errno.EBADF
        print("ok")
    """, fake_mount.path, other.path, setup=WHO_CODE)
    assert out.strip() == "ok"


# -- deferred replies and INTERRUPT -----------------------------------------------------------

def _wait_line(p, want, timeout=10):
    end = time.monotonic() + timeout
    line = p.stdout.readline()
    assert line.strip() == want, (line, p.stderr.read() if p.poll() is not None else "")
    # "blocking" is printed before the call: give the request time to reach the server.
    time.sleep(0.2)
    assert time.monotonic() < end


@pytest.mark.parametrize("mode", ["block", "frameblock"])
def test_interrupt_sigint_with_handler_gets_eintr(mount_factory, tclient, mode):
    m = mount_factory(emulator=FAKE)
    node = m.path + "/iommu"
    p = subprocess.Popen([tclient, mode, node, "sigint"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_line(p, "blocking")
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    out, errs = p.communicate(timeout=5)
    assert out.strip() == f"result -1 errno {errno.EINTR}", errs
    # The server still serves, and a later block/unblock completes.
    out = run_py("""
        fd = os.open(sys.argv[1], os.O_RDWR)
        assert ioctl(fd, 0xF500) == 0
        print("ok")
    """, node)
    assert out.strip() == "ok"


@pytest.mark.parametrize("mode", ["block", "frameblock"])
def test_interrupt_sigkill_client_exits(mount_factory, tclient, mode):
    m = mount_factory(emulator=FAKE)
    p = subprocess.Popen([tclient, mode, m.path + "/iommu"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_line(p, "blocking")
    p.kill()
    assert p.wait(timeout=5) == -signal.SIGKILL


def test_deferred_request_completes_and_the_loop_keeps_serving(mount_factory, tclient):
    m = mount_factory(emulator=FAKE)
    node = m.path + "/iommu"
    blocked = [subprocess.Popen([tclient, mode, node], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for mode in ("block", "block", "frameblock")]
    for p in blocked:
        _wait_line(p, "blocking")
    # While three requests wait, others are served at once.
    p = subprocess.run([tclient, "null", node, "100"], capture_output=True, text=True, timeout=10)
    assert p.stdout.strip() == "ok"
    run_py("""
        fd = os.open(sys.argv[1], os.O_RDWR)
        assert ioctl(fd, %d) == 0
    """ % FAKE_UNBLOCK, node)
    for p in blocked:
        out, errs = p.communicate(timeout=10)
        assert out.splitlines()[-1] == "result 42 errno 0", errs


async def test_inproc_deferred_and_core_lock(inproc_mount):
    """In-process: many clients at once, blocked ones included; core is never
    entered by two threads at once."""
    import trio

    emu = inproc_mount.emulator
    node = inproc_mount.path + "/iommu"

    def client(i):
        fd = os.open(node, os.O_RDWR)
        try:
            for j in range(50):
                os.write(fd, frame_bytes(FAKE_DOUBLE, struct.pack("<IIQQ", 24, 0, j, 0)))
                assert struct.unpack_from("<Q", os.read(fd, 4096), 32)[0] == 2 * j + 1
        finally:
            os.close(fd)

    def blocked():
        fd = os.open(node, os.O_RDWR)
        try:
            os.write(fd, frame_bytes(FAKE_BLOCK))
            return struct.unpack_from("<i", os.read(fd, 64), 4)[0]
        finally:
            os.close(fd)

    def unblock():
        fd = os.open(node, os.O_RDWR)
        os.write(fd, frame_bytes(FAKE_UNBLOCK))
        os.read(fd, 64)
        os.close(fd)

    results = []
    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(lambda: trio.to_thread.run_sync(lambda: results.append(blocked())))
        async with trio.open_nursery() as n2:
            for i in range(4):
                n2.start_soon(trio.to_thread.run_sync, client, i)
        await trio.sleep(0.1)
        assert results == []
        await trio.to_thread.run_sync(unblock)
    assert results == [42, 42, 42]
    assert emu.overlaps == 0
    assert not inproc_mount.session._deferred


# -- close -------------------------------------------------------------------------------

def _closes(fd, ctx_id):
    import fcntl
    buf = bytearray(struct.pack("<III", 12, ctx_id, 0))
    fcntl.ioctl(fd, FAKE_CLOSED, buf)
    return struct.unpack_from("<I", buf, 8)[0]


def _ctx_id(fd):
    import fcntl
    buf = bytearray(struct.pack("<IIIIIIIi", 32, 0, 0, 0, 0, 0, 0, 0))
    assert fcntl.ioctl(fd, FAKE_WHO, buf) == 7
    return struct.unpack_from("<I", buf, 20)[0]


def test_release_and_sync_close_call_close_once(fake_mount):
    mnt = fake_mount.path
    probe = os.open(mnt + "/iommu", os.O_RDWR)
    try:
        fd = os.open(mnt + "/iommu", os.O_RDWR)
        cid = _ctx_id(fd)
        assert _closes(probe, cid) == 0
        os.close(fd)
        end = time.monotonic() + 5
        while _closes(probe, cid) == 0 and time.monotonic() < end:
            time.sleep(0.01)      # FUSE releases asynchronously
        assert _closes(probe, cid) == 1
        # Synchronous close: done when the ioctl returns, and only once.
        import fcntl
        fd = os.open(mnt + "/iommu", os.O_RDWR)
        cid = _ctx_id(fd)
        assert fcntl.ioctl(fd, SYNC_CLOSE) == 0
        assert _closes(probe, cid) == 1
        assert oserr(fcntl.ioctl, fd, FAKE_WHO) == errno.EBADF
        assert fcntl.ioctl(fd, SYNC_CLOSE) == 0            # idempotent
        os.close(fd)
        time.sleep(0.2)
        assert _closes(probe, cid) == 1
    finally:
        os.close(probe)


# -- poll -----------------------------------------------------------------------------------

def test_poll_and_edge_triggered_epoll_see_every_change(fake_mount):
    fd = os.open(fake_mount.path + "/iommu", os.O_RDWR)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLOUT)
        assert p.poll(0) == [(fd, select.POLLOUT)]          # revents masked to what was asked
        ep = select.epoll()
        ep.register(fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        assert ep.poll(1) == [(fd, select.EPOLLOUT)]
        assert ep.poll(0.05) == []                          # edge: reported once
        os.write(fd, frame_bytes(NULL))                     # a reply is now pending
        assert ep.poll(1) == [(fd, select.EPOLLIN)]
        assert p.poll(0) == [(fd, select.POLLIN)]
        os.read(fd, 64)
        assert ep.poll(1) == [(fd, select.EPOLLOUT)]
        ep.close()
    finally:
        os.close(fd)


# -- lifecycle ---------------------------------------------------------------------------------

def test_sigterm_unmounts_even_with_files_open(mount_factory):
    m = mount_factory(emulator=FAKE)
    fd = os.open(m.path + "/iommu", os.O_RDWR)
    try:
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=10) == 0, m.log_text()
        assert not m.mounted()
        import fcntl
        assert oserr(fcntl.ioctl, fd, NULL) in (errno.ENOTCONN, errno.ECONNABORTED)
    finally:
        assert oserr(os.close, fd) in (0, errno.ENOTCONN)   # released all the same


def test_sigint_and_external_umount_end_the_server(mount_factory):
    m = mount_factory(emulator=FAKE)
    m.proc.send_signal(signal.SIGINT)
    assert m.proc.wait(timeout=10) == 0, m.log_text()
    assert not m.mounted()
    m = mount_factory(emulator=FAKE)
    r = subprocess.run([sys.executable, "-m", "devfs.cli", "umount", m.path],
                       capture_output=True, text=True, env=client_env())
    assert r.returncode == 0, r.stderr
    assert m.proc.wait(timeout=10) == 0, m.log_text()
    assert not m.mounted()


def test_stale_mount_is_cleaned_by_the_next_mount(mount_factory):
    m = mount_factory(emulator=FAKE)
    # Kill the auto_unmount helper first, then the server: the mount stays, dead.
    helpers = server_children(m.pid, "fusermount3")
    assert helpers, "no auto_unmount helper"
    for pid in helpers:
        kill_pid(pid)
    kill_pid(m.pid)
    m.proc.wait(timeout=10)
    assert m.mounted()
    assert oserr(os.stat, m.path) == errno.ENOTCONN
    m2 = mount_factory(emulator=FAKE, path=m.path)
    assert sorted(os.listdir(m2.path)) == ["devices", "fds", "iommu", "vfio"]


def test_sigkill_with_auto_unmount_leaves_no_mount(mount_factory):
    m = mount_factory(emulator=FAKE)
    kill_pid(m.pid)
    m.proc.wait(timeout=10)
    end = time.monotonic() + 15   # the helper is slow to run on a loaded machine
    while m.mounted() and time.monotonic() < end:
        time.sleep(0.01)
    assert not m.mounted()


def test_cli_background_mount_returns_when_usable():
    path = tempfile.mkdtemp(prefix="iommufs-bg-")
    os.rmdir(path)                      # the command creates it
    r = subprocess.run([sys.executable, "-m", "devfs.cli", "mount", path, "--emulator", FAKE],
                       capture_output=True, text=True, env=client_env(), timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(path)) == ["devices", "fds", "iommu", "vfio"]
        r2 = subprocess.run([sys.executable, "-m", "devfs.cli", "mount", path, "--emulator", FAKE],
                            capture_output=True, text=True, env=client_env(), timeout=30)
        assert r2.returncode == 1 and "already mounted" in r2.stderr
    finally:
        subprocess.run([sys.executable, "-m", "devfs.cli", "umount", path], env=client_env())
    end = time.monotonic() + 5
    from devfs.session import mount_fstype
    while mount_fstype(path) and time.monotonic() < end:
        time.sleep(0.01)
    assert mount_fstype(path) is None
    os.rmdir(path)
