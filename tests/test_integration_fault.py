"""Integration tests of I/O page faults (issue 4) through a real mount.

A fault handler runs as its own process (Python with epoll, and C), holding
the iommufd, the fault fd (opened from the node the server made) and the
memory; the test process plays the PRI device through ``devices/<name>/dma``
and its DMA waits until the handler maps the page and answers. Also: the
§10.1 rules on the real fd, the node's privacy and lifetime, and that no
exit, kill or signal leaves a DMA waiting or the server hurt.
"""
import errno
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import build_c, client_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEL, PLAIN = "0000:00:04.0", "0000:00:03.0"
PAGE = 4096

# A handler: IOPF HWPT on an IOAS for the accelerator, a 64-page buffer
# mapped on demand at IOVA 0x40000000 + offset; serves faults with epoll
# until told to stop on stdin, then prints its buffer's first bytes.
HANDLER = """
import os, select, sys
from core import uapi
from devfs.client import Buffer, Iommufd, VfioDevice
M, frames = sys.argv[1], sys.argv[2] == "frames"
fd = Iommufd(M, frames=frames)
dev = VfioDevice(M, "0000:00:04.0", frames=frames)
dev_id = dev.bind(fd)
fault_id, fq = fd.fault_queue_alloc()
ioas = fd.ioas_alloc()
hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=fault_id)
dev.attach(hwpt)
buf = Buffer(64 * 4096)
BASE = 0x40000000
ep = select.epoll()
ep.register(fq.fileno(), select.EPOLLIN | select.EPOLLET)
ep.register(sys.stdin.fileno(), select.EPOLLIN)
print("ready", dev_id, fq.path, flush=True)
served = 0
while True:
    events = dict(ep.poll(30))
    if sys.stdin.fileno() in events:
        break
    for group in fq.read_groups():
        for r in group:
            off = r["addr"] - BASE
            assert r["dev_id"] == dev_id and r["flags"] & 2 == (2 if r is group[-1] else 0)
            fd.ioas_map(ioas, buf.va + off, 4096, iova=r["addr"])
        fq.respond(group[0]["cookie"])
        served += 1
print(served, bytes(buf[0:16]).hex(), bytes(buf[8192:8200]).hex(), flush=True)
"""


def start_handler(mount, mode="ioctl"):
    p = subprocess.Popen([sys.executable, "-c", HANDLER, mount.path, mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env())
    line = p.stdout.readline().split()
    assert line and line[0] == "ready", p.stderr.read()
    return p, int(line[1]), line[2]


@pytest.mark.parametrize("mode", ["ioctl", "frames"])
def test_handler_process_serves_faults_with_epoll(mount, mode):
    from devfs.client import DmaPort

    p, dev_id, node = start_handler(mount, mode)
    try:
        assert node.startswith(os.path.join(mount.path, "fds/fault-"))
        st = os.stat(node)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        port = DmaPort(mount.path, ACCEL)
        port.write(0x40000000, b"first fault done")              # waits for the handler
        port.write(0x40002000 - 4, b"two pages")                 # one group, two pages
        assert port.read(0x40000000, 16) == b"first fault done"  # mapped now: no fault
        port.close()
        p.stdin.write("stop\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
        served, head, mid = out.split()
        assert int(served) == 2
        assert bytes.fromhex(head) == b"first fault done"
        assert bytes.fromhex(mid)[:5] == b"pages"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killed_handler_frees_the_waiting_dma(mount):
    """The handler dies with a fault unanswered: its context goes, the FAULT
    object answers INVALID, and the DMA fails instead of waiting forever."""
    from devfs.client import DmaError, DmaPort

    p = subprocess.Popen([sys.executable, "-c", HANDLER.replace("fq.respond", "pass  # fq.respond"),
                          mount.path, "ioctl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=client_env())
    line = p.stdout.readline().split()
    assert line[0] == "ready", p.stderr.read()
    node = line[2]
    result = {}

    def dma():
        port = DmaPort(mount.path, ACCEL)
        try:
            port.write(0x40000000, b"never")
            result["status"] = 0
        except DmaError as e:
            result["status"] = e.errno
        port.close()

    t = threading.Thread(target=dma)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()                                           # waiting for the response
    p.kill()
    p.wait()
    t.join(10)
    assert not t.is_alive(), "the DMA still waits after the handler died"
    assert result["status"] == errno.EFAULT
    deadline = time.monotonic() + 5
    while os.path.exists(node) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(node)                               # the fd's node is gone


def test_dma_waiting_for_a_fault_can_be_interrupted(mount):
    """A client blocked reading its DMA reply gets EINTR from a signal; the
    server lives on and a later response is still accepted."""
    p, dev_id, node = start_handler(mount)
    p.send_signal(signal.SIGSTOP)                                  # the handler does not answer
    code = textwrap.dedent(f"""
        import os, signal, struct, sys
        class Interrupted(Exception):
            pass
        def handler(*a):
            raise Interrupted()     # else Python retries the read after EINTR (PEP 475)
        signal.signal(signal.SIGUSR1, handler)
        fd = os.open("{mount.path}/devices/{ACCEL}/dma", os.O_RDWR)
        os.write(fd, struct.pack("<4sIIIQII", b"IODM", 2, 0, 0, 0x40004000, 4, 0) + b"wait")
        print("waiting", flush=True)
        try:
            os.read(fd, 64)
            print("no EINTR")
        except Interrupted:
            print("EINTR")
        """)
    c = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert c.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        c.send_signal(signal.SIGUSR1)
        assert c.stdout.readline().strip() == "EINTR"
        assert c.wait(10) == 0
        p.send_signal(signal.SIGCONT)
        from devfs.client import DmaPort
        DmaPort(mount.path, ACCEL).write(0x40005000, b"still served")
        p.stdin.write("stop\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=30)
        assert int(out.split()[0]) == 2                            # the abandoned one too
    finally:
        for x in (p, c):
            if x.poll() is None:
                x.kill()
                x.wait()


RULES = """
import errno, os, select, struct, sys
from core import uapi
from devfs.client import DmaPort, Iommufd, VfioDevice
M = sys.argv[1]
def err(fn, *a):
    try:
        fn(*a)
    except OSError as e:
        return e.errno
    raise AssertionError("succeeded")
fd = Iommufd(M)
dev = VfioDevice(M, "0000:00:04.0")
dev_id = dev.bind(fd)
fault_id, fq = fd.fault_queue_alloc()
assert err(fd.destroy, fault_id) == errno.EBUSY                # the fd holds it
ioas = fd.ioas_alloc()
hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=fault_id)
dev.attach(hwpt)
f = fq.fileno()
p = select.poll(); p.register(f, select.POLLIN | select.POLLOUT)
assert p.poll(0) == [(f, select.POLLOUT)]                      # always writable, not readable
assert os.read(f, 40) == b""                                    # never blocks
assert err(os.read, f, 39) == errno.ESPIPE
assert err(os.write, f, b"1234567") == errno.ESPIPE
assert err(os.write, f, struct.pack("<II", 1, 0)) == errno.EINVAL   # no such cookie
assert err(os.write, f, struct.pack("<II", 1, 2)) == errno.EINVAL   # no such code
print("ready", flush=True)
sys.stdin.readline()                                            # the test made a DMA fault
ev = p.poll(5000)
assert ev and ev[0][1] & select.POLLIN, ev
assert err(os.read, f, 40) == errno.EINVAL                      # the group does not fit
data = os.read(f, 400)
assert len(data) == 80, len(data)                              # one group of two pages
flags = [struct.unpack_from("<I", data, o)[0] for o in (0, 40)]
assert flags == [0, 2], flags
cookie = struct.unpack_from("<I", data, 36)[0]
assert cookie == 1
assert os.read(f, 40) == b""
assert os.write(f, struct.pack("<IIII", cookie, 1, 99, 0)) == 8   # one answered, then a bad cookie
assert err(os.write, f, struct.pack("<II", cookie, 0)) == errno.EINVAL
print("answered", flush=True)
fq.close()
dev.detach()
fd.destroy(hwpt)
fd.destroy(fault_id)                                            # node closed, no HWPT: gone
assert not os.path.exists(fq.path)
print("ok", flush=True)
"""


def test_fault_fd_rules_through_the_mount(mount):
    from devfs.client import DmaError, DmaPort

    p = subprocess.Popen([sys.executable, "-c", RULES, mount.path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env())
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        result = {}

        def dma():
            try:
                DmaPort(mount.path, ACCEL).write(0x10000000 + PAGE - 2, b"span")
                result["e"] = 0
            except DmaError as e:
                result["e"] = e.errno

        t = threading.Thread(target=dma)
        t.start()
        time.sleep(0.2)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "answered", p.stderr.read()
        t.join(10)
        assert result["e"] == errno.EFAULT                     # answered INVALID
        out, err = p.communicate(timeout=30)
        assert out.strip() == "ok", err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


SYNC_CLOSE_CODE = """
import errno, fcntl, os, select, sys
from core import uapi
from devfs.client import Iommufd
M = sys.argv[1]
def err(fn, *a):
    try:
        fn(*a)
    except OSError as e:
        return e.errno
    raise AssertionError("succeeded")
fd = Iommufd(M)
# The Python client's close is synchronous: destroy right after it succeeds,
# even while another fd keeps the open file (the close means closed now).
fault_id, fq = fd.fault_queue_alloc()
other = os.dup(fq.fileno())
fq.close()
fd.destroy(fault_id)
assert not os.path.exists(fq.path)
assert err(os.read, other, 40) == errno.EBADF
os.close(other)
# ioctl() on the fault node: the kernel's fault fd has none (ENOTTY); the
# transport answers IOMMUFS_NULL and IOMMUFS_SYNC_CLOSE there.
fault_id, fq = fd.fault_queue_alloc()
f = fq.fileno()
assert fcntl.ioctl(f, uapi.IOMMUFS_NULL) == 0
for cmd in (uapi.IOMMU_DESTROY, uapi.IOMMU_TEST_CMD, uapi.IOMMUFS_WHOAMI, uapi.IOMMUFS_FD_PATH,
            0xF5FF, uapi.VFIO_DEVICE_BIND_IOMMUFD, uapi.IOMMU_DESTROY | 0x40080000):
    assert err(fcntl.ioctl, f, cmd, bytes(16)) == errno.ENOTTY, hex(cmd)
assert err(fd.destroy, fault_id) == errno.EBUSY                # the fd holds it
assert fcntl.ioctl(f, uapi.IOMMUFS_SYNC_CLOSE) == 0
fd.destroy(fault_id)                                           # released: destroyable at once
assert fcntl.ioctl(f, uapi.IOMMUFS_SYNC_CLOSE) == 0            # idempotent
assert err(fcntl.ioctl, f, uapi.IOMMUFS_NULL) == errno.EBADF
assert err(os.read, f, 40) == errno.EBADF
assert err(os.write, f, bytes(8)) == errno.EBADF
p = select.poll(); p.register(f, select.POLLIN | select.POLLOUT)
assert p.poll(0) == [(f, select.POLLERR)]
os.close(f)
fq.fd = -1
fd.sync_close()
print("ok", flush=True)
"""


def test_fault_fd_synchronous_close(mount):
    """Closing a fault fd through the Python client, or IOMMUFS_SYNC_CLOSE
    on it, releases the FAULT object at once: IOMMU_DESTROY right after
    succeeds, as after the kernel's synchronous close. Other ioctls on the
    node are ENOTTY; after the synchronous close the fd answers EBADF."""
    p = subprocess.run([sys.executable, "-c", SYNC_CLOSE_CODE, mount.path], capture_output=True,
                       text=True, env=client_env(), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == "ok\n"


def test_fault_node_is_private_to_its_uid(mount):
    from devfs.client import Iommufd

    fd = Iommufd(mount.path)
    fault_id, fq = fd.fault_queue_alloc()
    try:
        assert os.path.basename(fq.path) in os.listdir(os.path.join(mount.path, "fds"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(1000)
                os.setuid(1000)
                try:
                    os.open(fq.path, os.O_RDWR)
                except PermissionError:
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        os.close(r)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        fq.close()
        fd.sync_close()
    assert not os.path.exists(fq.path)


def test_c_handler_serves_faults_with_epoll(mount, tmp_path):
    from devfs.client import DmaPort

    exe = build_c(tmp_path, "fault_handler")
    p = subprocess.Popen([str(exe), mount.path, "vfio1", "3"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        assert line[0] == "ready", line
        port = DmaPort(mount.path, ACCEL)
        port.write(0x70000000, b"C handler ok")
        port.write(0x70010000, b"x" * (3 * PAGE))              # one group of three pages
        port.write(0x70020000, b"y")
        assert port.read(0x70000000, 12) == b"C handler ok"
        out, _ = p.communicate(timeout=30)
        assert out.strip() == "served 3 C handler ok"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_non_pri_device_fails_at_once_and_logs(mount):
    from devfs.client import DmaError, DmaPort, Iommufd, VfioDevice

    fd = Iommufd(mount.path)
    dev = VfioDevice(mount.path, PLAIN)
    dev_id = dev.bind(fd)
    fault_id, fq = fd.fault_queue_alloc()
    ioas = fd.ioas_alloc()
    from core import uapi
    hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=fault_id)
    dev.attach(hwpt)
    with pytest.raises(DmaError) as e:
        DmaPort(mount.path, PLAIN).write(0x1234000, b"x")
    assert e.value.errno == errno.EFAULT
    assert fq.read_groups() == []
    import json
    with open(os.path.join(mount.path, "devices", PLAIN, "info")) as f:
        assert json.load(f)["last_fault"]["iova"] == 0x1234000
    fq.close()
    dev.sync_close()
    fd.sync_close()


def test_dma_frame_abandoned_at_once_leaves_no_fd_in_the_server(mount):
    """A PRI DMA frame whose writer closes the dma file right after the
    write: the background wait is cancelled, often before its task started,
    and the fault group's wake-up eventfd must still be closed once the
    group is answered (here: INVALID, when the context goes)."""
    def server_fds(kind):
        out = 0
        for fd in os.listdir(f"/proc/{mount.pid}/fd"):
            try:
                out += os.readlink(f"/proc/{mount.pid}/fd/{fd}") == kind
            except OSError:
                pass
        return out

    before = server_fds("anon_inode:[eventfd]")
    code = textwrap.dedent(f"""
        import os, struct, sys
        from core import uapi
        from devfs.client import Iommufd, VfioDevice
        M = sys.argv[1]
        fd = Iommufd(M)
        dev = VfioDevice(M, "{ACCEL}")
        dev_id = dev.bind(fd)
        fault_id, fq = fd.fault_queue_alloc()
        ioas = fd.ioas_alloc()
        hwpt = fd.hwpt_alloc(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID,
                             fault_id=fault_id)
        dev.attach(hwpt)
        for i in range(200):
            d = os.open(M + "/devices/{ACCEL}/dma", os.O_RDWR)
            os.write(d, struct.pack("<4sIIIQII", b"IODM", 2, 0, 0, 0x40000000 + i * 4096, 4, 0)
                     + b"gone")
            os.close(d)
        fq.close()
        dev.sync_close()
        fd.sync_close()
        print("done")
        """)
    p = subprocess.run([sys.executable, "-c", code, mount.path], capture_output=True, text=True,
                       env=client_env(), timeout=60)
    assert p.stdout.strip() == "done", p.stderr
    end = time.monotonic() + 5
    while server_fds("anon_inode:[eventfd]") != before and time.monotonic() < end:
        time.sleep(0.05)
    assert server_fds("anon_inode:[eventfd]") == before
