"""Fault tests (issue 8): processes die in the middle of things.

- A client SIGKILLed while it holds a context, an IOAS with mappings, an
  IOPF-capable HWPT, a bound and attached device and a DMA waiting for its
  page response: the DMA ends with an error, nothing of the client remains
  in the server (objects, pidfds, maps fds, nodes), and the device binds
  again at once.
- The server SIGKILLed under traffic: every client (one blocked reading a
  DMA reply, one in an ioctl loop) gets an error within a second and none
  is left in uninterruptible sleep; the mount point is usable again.
- An access fd handed to another uid: EACCES, the access stays.
"""
import errno
import json
import os
import subprocess
import sys
import textwrap
import time

from conftest import client_env, kill_pid, start_server, stop_server
from core import uapi
from devfs.client import Iommufd, Selftest, VfioDevice

ACCEL = "0000:00:04.0"
BASE = 0x40000000

HOLDER = """
import sys
from core import uapi
from devfs.client import Buffer, Iommufd, VfioDevice
M = sys.argv[1]
fd = Iommufd(M)
dev = VfioDevice(M, "0000:00:04.0")
dev_id = dev.bind(fd)
fault_id, fq = fd.fault_queue_alloc()
ioas = fd.ioas_alloc()
hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=fault_id)
dev.attach(hwpt)
buf = Buffer(64 * 4096)
for i in range(8):                      # eight areas, one per page, pinned into the domain
    fd.ioas_map(ioas, buf.va + i * 4096, 4096, iova=0x100000 + i * 4096)
ioas2 = fd.ioas_alloc()
fd.ioas_map(ioas2, buf.va, 64 * 4096)
print("ready", dev_id, fq.path, flush=True)
sys.stdin.read()                         # never answers the fault: killed first
"""

DMA = """
import sys, time
from devfs.client import DmaError, DmaPort
port = DmaPort(sys.argv[1], "0000:00:04.0")
print("start", flush=True)
try:
    port.write(int(sys.argv[2]), b"never lands")
    print("ok", flush=True)
except DmaError as e:
    print("error", e.errno, time.monotonic(), flush=True)
except OSError as e:
    print("oserror", e.errno, time.monotonic(), flush=True)
"""


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rindex(")") + 2]


def _wait(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _server_fds(pid):
    return sorted(os.listdir(f"/proc/{pid}/fd"))


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=client_env())


def test_killed_client_leaves_nothing_and_frees_its_dma(mount):
    fds_before = len(_server_fds(mount.pid))
    holder = _spawn(HOLDER, mount.path)
    line = holder.stdout.readline().split()
    assert line and line[0] == "ready", holder.stderr.read()
    node = line[2]
    info = json.load(open(f"{mount.path}/devices/{ACCEL}/info"))
    assert info["dev_id"] == int(line[1]) and info["attached"], info

    dma = _spawn(DMA, mount.path, BASE)
    assert dma.stdout.readline().strip() == "start"
    time.sleep(0.5)
    assert dma.poll() is None            # parked on its page request

    holder.kill()
    holder.wait()
    killed = time.monotonic()
    out = dma.stdout.readline().split()
    dma.wait(10)
    assert out[:2] == ["error", str(errno.EFAULT)], out
    assert float(out[2]) - killed < 1.0

    # Nothing of the client is left: no device binding, no fault node, and
    # the server holds no more fds (pidfds, maps fds) than before.
    assert _wait(lambda: json.load(open(f"{mount.path}/devices/{ACCEL}/info"))["dev_id"] is None, 2)
    assert not os.path.exists(node)
    assert _wait(lambda: len(_server_fds(mount.pid)) <= fds_before, 2), _server_fds(mount.pid)

    # The device binds again at once, to a fresh context whose IDs start at 1.
    with Iommufd(mount.path) as fd, VfioDevice(mount.path, ACCEL) as dev:
        assert dev.bind(fd) == 1
        assert fd.ioas_alloc() == 2


LOOPER = """
import sys, time
from devfs.client import Iommufd
fd = Iommufd(sys.argv[1])
print("ready", flush=True)
try:
    while True:
        fd.destroy(fd.ioas_alloc())
except OSError as e:
    print("oserror", e.errno, time.monotonic(), flush=True)
"""


def test_killed_server_fails_every_client_within_a_second():
    m = start_server()
    try:
        holder = _spawn(HOLDER, m.path)
        line = holder.stdout.readline().split()
        assert line and line[0] == "ready", holder.stderr.read()
        dma = _spawn(DMA, m.path, BASE)
        assert dma.stdout.readline().strip() == "start"
        looper = _spawn(LOOPER, m.path)
        assert looper.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        assert dma.poll() is None and looper.poll() is None

        kill_pid(m.pid)
        killed = time.monotonic()
        m.proc.wait(10)
        for p in (dma, looper):
            out = p.stdout.readline().split()
            assert out and out[0] in ("error", "oserror"), (out, p.stderr.read())
            assert int(out[1]) in (errno.ENOTCONN, errno.ECONNABORTED), out
            assert float(out[2]) - killed < 1.0, out
            p.wait(5)
        # The holder sits in its own read of stdin: it must not be stuck in D
        # state on the dead mount either, and it exits when told.
        assert _proc_state(holder.pid) != "D"
        holder.stdin.close()
        assert holder.wait(5) is not None
        # Whether or not auto_unmount could take the busy mount away, the
        # same point mounts again.
        m2 = start_server(m.path)
        try:
            with Iommufd(m2.path) as fd:
                assert fd.ioas_alloc() == 1
        finally:
            stop_server(m2, remove=False)
    finally:
        stop_server(m)


def test_other_uid_cannot_use_or_close_an_access_fd(mount):
    from test_hardening import _as_other_uid, _errno_of_ioctl, _private_from_other_uid

    with Iommufd(mount.path) as fd:
        st = Selftest(fd)
        ioas = fd.ioas_alloc()
        afd = st.create_access(ioas)
        try:
            got = _private_from_other_uid(afd.fd, frames=False)
            assert got[hex(uapi.IOMMUFS_SYNC_CLOSE)] == -errno.EACCES, got
            assert _errno_of_ioctl(afd.fd, uapi.IOMMUFS_NULL) == 0     # still open for its owner
        finally:
            afd.close()
