"""Integration tests of the device-centric model (issue 3) through a mount.

One test per seed thread, each a client process (Python, and a C program for
the PASID attach rules) against a real mount, checking errnos and the bytes
DMA moved in the client's own memory:

- seed 000/001 (/dev/ioasid RFC, device-centric attach, groups): RID aliases;
- seed 003 (per-domain PASID): device and global PASID spaces, one HWPT for
  two devices under their own PASIDs;
- seed 004 (RFC v2, mdev = parent RID + default PASID);
- seed 002 (SVA bind, handle, get_pasid, mm_exit, unbind).
"""
import errno
import json
import os
import select
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import build_c, client_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN, ACCEL, LOCAL = "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"
BR0, BR1 = "0000:01:00.0", "0000:01:01.0"

PRELUDE = """
import errno, json, os, sys
from core import uapi
from devfs.client import Buffer, DeviceDriver, DmaError, DmaPort, Iommufd, VfioDevice
M = sys.argv[1]
def err(fn, *a, **k):
    try:
        fn(*a, **k)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__} succeeded")
"""


def run_py(code, *args, timeout=60):
    p = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)],
                       capture_output=True, text=True, env=client_env(), timeout=timeout)
    if p.returncode != 0:
        pytest.fail(f"client failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def info(mnt, name):
    with open(os.path.join(mnt, "devices", name, "info")) as f:
        return json.load(f)


def test_seed_001_group_behind_a_bridge(mount):
    """Devices sharing a RID form one group: one context owns it, its members
    attach one HWPT, and a member's DMA reaches what another attached."""
    assert info(mount.path, BR0)["group_members"] == [BR0, BR1]
    assert info(mount.path, BR0)["rid"] == info(mount.path, BR1)["rid"] == 0xF0
    assert info(mount.path, BR0)["group"] == info(mount.path, BR1)["group"]
    out = run_py(f"""
        fd1, fd2 = Iommufd(M), Iommufd(M)
        d0, d1 = VfioDevice(M, "{BR0}"), VfioDevice(M, "{BR1}")
        id0 = d0.bind(fd1)
        assert err(d1.bind, fd2) == errno.EBUSY          # the group is owned by fd1
        id1 = d1.bind(fd1)
        ioas = fd1.ioas_alloc()
        h0, h1 = fd1.hwpt_alloc(id0, ioas), fd1.hwpt_alloc(id1, ioas)
        d0.attach(h0)
        assert err(d1.attach, h1) == errno.EINVAL         # one HWPT per group
        buf = Buffer(1 << 20)
        fd1.ioas_map(ioas, buf.va, 1 << 20, iova=0x10000000)
        # BR1 never attached: its DMA carries the bridge's RID all the same.
        DmaPort(M, "{BR1}").write(0x10000100, b"through the alias")
        assert buf[0x100:0x111] == b"through the alias"
        assert d1.attach(h0) == h0
        d0.detach()
        DmaPort(M, "{BR0}").write(0x10000200, b"still")  # BR1's attachment now
        assert buf[0x200:0x205] == b"still"
        d1.detach()
        e = err(DmaPort(M, "{BR0}").write, 0x10000200, b"x")
        assert e == errno.ENODEV, e
        print("ok")
        """, mount.path)
    assert out.strip() == "ok"


def test_seed_003_device_and_global_pasid_spaces(mount):
    """The driver allocates PASIDs from the device's own space, or from the
    system-wide one for ENQCMD; the PASID lives in the attachment, so one
    HWPT serves two devices under their own PASIDs."""
    out = run_py(f"""
        accel, local = DeviceDriver(M, "{ACCEL}"), DeviceDriver(M, "{LOCAL}")
        assert err(DeviceDriver(M, "{PLAIN}").pasid_alloc) == errno.EOPNOTSUPP
        pa, pl = accel.pasid_alloc(), local.pasid_alloc()
        assert (pa, pl) == (1, 1)                 # two spaces: the same value twice
        pa2 = accel.pasid_alloc()
        fd = Iommufd(M)
        va, vl = VfioDevice(M, "{ACCEL}"), VfioDevice(M, "{LOCAL}")
        ida, idl = va.bind(fd), vl.bind(fd)
        ioas = fd.ioas_alloc()
        hwpt = fd.hwpt_alloc(ida, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
        buf = Buffer(1 << 20)
        fd.ioas_map(ioas, buf.va, 1 << 20, iova=0x200000)
        va.attach(hwpt, pasid=pa2)
        vl.attach(hwpt, pasid=pl)
        DmaPort(M, "{ACCEL}").write(0x200000, b"accel@%d" % pa2, pasid=pa2)
        DmaPort(M, "{LOCAL}").write(0x200010, b"local@%d" % pl, pasid=pl)
        assert buf[0:7] == b"accel@2" and buf[0x10:0x17] == b"local@1"
        e = err(DmaPort(M, "{ACCEL}").write, 0x200000, b"x", pasid=pl)
        assert e == errno.EFAULT, e               # PASID 1 is not attached on the accelerator
        assert buf[0:1] == b"a"
        # Exhaustion and reuse of the 8-bit space: 255 PASIDs, then ENOSPC.
        got = [local.pasid_alloc() for _ in range(254)]
        assert got == list(range(2, 256))
        assert err(local.pasid_alloc) == errno.ENOSPC
        local.pasid_free(77)
        assert local.pasid_alloc() == 77
        assert err(local.pasid_free, 999) == errno.ENOENT
        print(json.dumps(json.load(open(M + "/devices/{LOCAL}/info"))["attached"]))
        local.sync_close()                        # the driver goes: its PASIDs are freed
        """, mount.path)
    assert json.loads(out) == {"pasid 1": 4}
    assert info(mount.path, LOCAL)["pasids_allocated"] == []


def test_seed_004_mdev_is_parent_rid_plus_default_pasid(mount):
    m = info(mount.path, "mdev0")
    assert (m["parent"], m["default_pasid"], m["rid"]) == (ACCEL, 1, info(mount.path, ACCEL)["rid"])
    out = run_py(f"""
        fd = Iommufd(M)
        md, parent = VfioDevice(M, "mdev0"), VfioDevice(M, "{ACCEL}")
        idm = md.bind(fd)
        idp = parent.bind(fd)
        assert idm != idp                         # its own DEVICE object (cookie)
        ioas = fd.ioas_alloc()
        hwpt = md.attach(ioas)                    # as QEMU attaches an mdev
        buf = Buffer(1 << 20)
        fd.ioas_map(ioas, buf.va, 1 << 20, iova=0x300000)
        DmaPort(M, "mdev0").write(0x300000, b"mdev dma")
        assert buf[0:8] == b"mdev dma"
        # {{parent RID, PASID 1}} is the mdev's route: the parent emitting
        # PASID 1 lands there too, and the parent cannot claim PASID 1.
        DmaPort(M, "{ACCEL}").write(0x300008, b"PASID 1!", pasid=1)
        assert buf[8:16] == b"PASID 1!"
        ph = fd.hwpt_alloc(idp, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
        assert err(parent.attach, ph, pasid=1) == errno.EBUSY
        assert err(md.attach, ph, pasid=2) == errno.EOPNOTSUPP   # an mdev has no PASID of its own
        i = json.load(open(M + "/devices/mdev0/info"))
        assert i["attached"] == {{"rid": hwpt}} and i["dev_id"] == idm, i
        md.detach()
        assert err(DmaPort(M, "mdev0").write, 0x300000, b"x") == errno.ENODEV
        print("ok")
        """, mount.path)
    assert out.strip() == "ok"


CHILD = """
import mmap, sys, cffi
f = cffi.FFI()
m = mmap.mmap(-1, 8192)
m[0:5] = b"READY"
print(int(f.cast("uintptr_t", f.from_buffer(m))), flush=True)
sys.stdin.readline()
print(m[100:116].decode(), flush=True)
sys.stdin.readline()
"""


def test_seed_002_sva_bond_handle_pasid_mm_exit_unbind(mount):
    """The driver binds a process to the ENQCMD accelerator and its
    PASID-less sibling device; the device DMAs at the process's virtual
    addresses; when the process exits, mm_exit arrives (poll wakes), DMA with
    the PASID fails, and unbind is still needed and succeeds."""
    from devfs.client import DeviceDriver, DmaError, DmaPort

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    drv = DeviceDriver(mount.path, ACCEL)
    try:
        va = int(child.stdout.readline())
        handle, pasid = drv.sva_bind(child.pid)
        assert drv.sva_bind(child.pid) == (handle, pasid)       # one more user
        assert drv.sva_get_pasid(handle) == pasid
        port = DmaPort(mount.path, ACCEL)
        assert port.read(va, 5, pasid=pasid) == b"READY"          # IOVA = the child's VA
        port.write(va + 100, b"written by a dev", pasid=pasid)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "written by a dev"
        i = info(mount.path, ACCEL)
        assert i["sva_bonds"] == [{"handle": handle, "pasid": pasid, "pid": child.pid, "mm_exited": False}]
        p = select.poll()
        p.register(drv.fd, select.POLLIN)
        assert p.poll(0) == []
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(10)
        ready = p.poll(10000)                                     # woken by mm_exit
        assert ready and ready[0][1] & select.POLLIN, ready
        assert drv.events() == [{"type": "mm_exit", "handle": handle, "pasid": pasid, "pid": child.pid}]
        assert drv.events() == []
        with pytest.raises(DmaError) as e:
            port.write(va + 100, b"too late", pasid=pasid)
        assert e.value.errno == errno.EFAULT
        assert info(mount.path, ACCEL)["sva_bonds"][0]["mm_exited"] is True
        assert drv.sva_unbind(handle) == pasid
        assert drv.sva_unbind(handle) == pasid                    # the second user
        with pytest.raises(OSError) as e:
            drv.sva_unbind(handle)
        assert e.value.errno == errno.ENOENT
        assert info(mount.path, ACCEL)["sva_bonds"] == []
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        drv.close()


def test_sva_same_pasid_on_every_enqcmd_device(mount_factory, tmp_path):
    topo = tmp_path / "two-accels.toml"
    topo.write_text(textwrap.dedent("""
        [[device]]
        name = "0000:00:04.0"
        pasid_bits = 20
        enqcmd = true
        [[device]]
        name = "0000:00:05.0"
        pasid_bits = 20
        enqcmd = true
        [[device]]
        name = "0000:00:06.0"
        pasid_bits = 4
    """))
    m = mount_factory(args=("--topology", str(topo)))
    out = run_py("""
        a, b, c = (DeviceDriver(M, n) for n in ("0000:00:04.0", "0000:00:05.0", "0000:00:06.0"))
        a.pasid_alloc(); a.pasid_alloc()           # global PASIDs 1 and 2 are taken
        (ha, pa), (hb, pb), (hc, pc) = a.sva_bind(), b.sva_bind(), c.sva_bind()
        assert pa == pb == 3 and pc == 1, (pa, pb, pc)
        buf = Buffer(4096)
        DmaPort(M, "0000:00:05.0").write(buf.va, b"global", pasid=pb)
        DmaPort(M, "0000:00:06.0").write(buf.va + 6, b"local", pasid=pc)
        assert buf[0:11] == b"globallocal"
        print("ok")
        """, m.path)
    assert out.strip() == "ok"


def test_sva_bond_to_another_uid_is_refused(mount):
    """A uid-1000 driver cannot bind a root process (this test's)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            from devfs.client import DeviceDriver
            os.setgid(1000)
            os.setuid(1000)
            d = DeviceDriver(mount.path, ACCEL)
            try:
                d.sva_bind(os.getppid())
            except OSError as e:
                os.write(w, str(e.errno).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    got = os.read(r, 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(got) == errno.EPERM
    assert info(mount.path, ACCEL)["sva_bonds"] == []


def test_c_client_pasid_attach_rules(mount, tmp_path):
    exe = build_c(tmp_path, "pasid_client", "-Wno-unused-result")
    p = subprocess.run([str(exe), mount.path, "vfio1", ACCEL], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ok ") == 20 and "FAIL" not in p.stdout


def test_demo_runs_every_seed_scenario(mount):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/demo_seeds.py"), mount.path],
                       capture_output=True, text=True, timeout=120, env=client_env())
    assert p.returncode == 0, p.stdout + p.stderr
    for seed in ("001", "002", "003", "004", "004 (RFC v2 4.6)"):
        assert f"seed {seed}:" in p.stdout
    assert p.stdout.strip().endswith("all scenarios ok")


def test_sva_bind_then_unbind_at_once_leaves_no_fd_in_the_server(mount):
    """A bond's mm_exit watch is a trio wait on a dup of the process's
    pidfd; an unbind right after the bind cancels that wait before its task
    has started, and the dup must be closed all the same (the fuzz test
    found one pidfd left per such race)."""
    def pidfds():
        fds = os.listdir(f"/proc/{mount.pid}/fd")
        return sum(os.readlink(f"/proc/{mount.pid}/fd/{fd}") == "anon_inode:[pidfd]" for fd in fds
                   if os.path.exists(f"/proc/{mount.pid}/fd/{fd}"))

    before = pidfds()
    run_py("""
        drv = DeviceDriver(M, sys.argv[2])
        for _ in range(300):
            handle, _ = drv.sva_bind()
            drv.sva_unbind(handle)
        drv.close()
    """, mount.path, LOCAL)
    # Cancelled waits close their dups on the trio thread, a moment later.
    end = time.monotonic() + 5
    while pidfds() != before and time.monotonic() < end:
        time.sleep(0.05)
    assert pidfds() == before
