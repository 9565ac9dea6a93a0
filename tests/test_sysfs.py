"""The sysfs view of ``iommufs run`` (devfs/sysfs.py): emulated functions
under /sys/bus/pci/devices in domain 01f5, beside the host's untouched ones,
with the files VMMs and the VFIO selftests read."""
import errno
import os
import stat
import subprocess

from devfs import sysfs
from test_run import iommufs_run

PLAIN = "0000:00:03.0"


def test_emulated_functions_appear_beside_the_hosts(mount):
    host = sorted(os.listdir("/sys/bus/pci/devices"))
    script = r"""
set -e
cd /sys/bus/pci/devices
ls -1
d=01f5:00:03.0
cat $d/vendor $d/device $d/class
ls $d/vfio-dev
cat $d/vfio-dev/vfio0/dev
readlink $d/driver
basename "$(readlink $d/iommu_group)"
stat -c %t:%T /dev/vfio/devices/vfio0
"""
    p = iommufs_run("sh", "-c", script, mount=mount.path)
    assert p.returncode == 0, p.stderr
    out = p.stdout.split("\n")
    listed = out[:out.index("0x1af4")]
    emulated = [n for n in listed if n.startswith("01f5:")]
    assert [n for n in listed if not n.startswith("01f5:")] == host      # the host's, all kept
    assert "01f5:00:03.0" in emulated and "01f5:00:04.0" in emulated
    assert "01f5:01:00.0" in emulated                  # behind the bridge: its own function
    i = out.index("0x1af4")
    assert out[i + 3] == "vfio0"
    assert out[i + 4] == "511:0"
    assert out[i + 5] == "../../../bus/pci/drivers/vfio-pci"
    assert out[i + 6].isdigit()
    # The shim's st_rdev of the node is what sysfs says (stat prints hex).
    assert out[i + 7] == "1ff:0"
    # Outside the run, the host's sysfs is as it was.
    assert sorted(os.listdir("/sys/bus/pci/devices")) == host


def test_sysfs_name_keeps_bus_device_function():
    from core.topology import Topology
    t = Topology.from_string('[[device]]\nname = "0000:1f:1f.7"\n'
                             '[[device]]\nname = "0000:00:03.0"\npasid_bits = 8\n'
                             '[[mdev]]\nname = "m"\nparent = "0000:00:03.0"\ndefault_pasid = 1\n')
    assert [d.sysfs_name for d in t.devices] == ["01f5:1f:1f.7", "01f5:00:03.0", None]


def test_device_files_follow_sysfs_formats():
    files = sysfs.device_files({"vfio": "vfio/devices/vfio3", "vendor": 0x1AF4, "device": 0x1042,
                                "group": 5, "class": 0x010000})
    assert files["vendor"] == b"0x1af4\n" and files["device"] == b"0x1042\n"
    assert files["class"] == b"0x010000\n"
    assert files["vfio-dev/vfio3/dev"] == b"511:3\n"
    assert files["iommu_group"] == ("link", "../.iommufs/iommu_groups/5")
    assert files["modalias"] == b"pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc00i00\n"


def test_kvm_vfio_file_add_and_del_for_iommufs_fds(mount, tmp_path):
    """QEMU with KVM adds the device fd to KVM's VFIO device before BIND; the
    shim answers for iommufs fds with the kernel's bookkeeping, and the
    kernel still answers for every other fd."""
    exe = str(tmp_path / "run_kvm_vfio")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", exe,
                    os.path.join(os.path.dirname(__file__), "c", "run_kvm_vfio.c")], check=True)
    p = iommufs_run(exe, "/dev/vfio/devices/vfio0", mount=mount.path)
    assert p.returncode == 0, p.stdout + p.stderr
    if p.stdout.startswith("skip"):
        import pytest
        pytest.skip(p.stdout.strip())
    got = dict(line.split() for line in p.stdout.splitlines())
    assert got == {"add": "0", "add_again": str(errno.EEXIST), "del": "0",
                   "del_again": str(errno.ENOENT),
                   "add_not_vfio": str(errno.EINVAL), "add_bad_fd": str(errno.EBADF)}, got
