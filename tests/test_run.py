"""``iommufs run`` and libiommufs-preload.so: unmodified programs (tests/c/run_*.c,
compiled here with gcc) open /dev/iommu and /dev/vfio/devices/vfioN by path.

Every program is its own process tree under ``iommufs run`` (devfs/run.py):
a private mount namespace, the shim preloaded, the server reading and
writing the program's own memory.
"""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, client_env

PLAIN = "0000:00:03.0"          # vfio0 of the built-in topology
PRI = ("0000:00:04.0", 1)       # a PRI device and its vfio number


@pytest.fixture(scope="module")
def bins():
    """The C programs of tests/c, built into a directory every user can read
    (``--user`` and non-root runs exec them)."""
    d = tempfile.mkdtemp(prefix="iommufs-run-bins-")
    os.chmod(d, 0o755)
    src = os.path.join(ROOT, "tests", "c")
    out = {}
    for name in ("run_dma", "run_threads", "run_fork", "run_fds", "run_stat", "run_spawn",
                 "run_fault", "run_close"):
        exe = os.path.join(d, name)
        # Fortified as distributions build: non-constant open flags call __open_2.
        subprocess.run(["gcc", "-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-pthread",
                        "-o", exe, os.path.join(src, name + ".c")], check=True)
        out[name] = exe
    marker = os.path.join(d, "libmarker.so")
    with open(os.path.join(d, "marker.c"), "w") as f:
        f.write('#include <unistd.h>\n'
                '__attribute__((constructor)) static void m(void) '
                '{ write(2, "marker loaded\\n", 14); }\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", marker, os.path.join(d, "marker.c")],
                   check=True)
    out["marker"] = marker
    yield out
    shutil.rmtree(d, ignore_errors=True)


def shim():
    return os.path.join(ROOT, "cext", "libiommufs-preload.so")


def run_cmd(*argv, mount=None, extra=()):
    cmd = [sys.executable, "-m", "devfs.cli", "run", *extra]
    if mount is not None:
        cmd += ["--mount", mount]
    return cmd + ["--", *map(str, argv)]


def iommufs_run(*argv, mount=None, extra=(), env=None, input=None, timeout=120):
    """``iommufs run [--mount MOUNT] EXTRA -- ARGV`` -> CompletedProcess (text)."""
    return subprocess.run(run_cmd(*argv, mount=mount, extra=extra), cwd=ROOT,
                          env=env or client_env(), input=input, capture_output=True,
                          text=True, timeout=timeout)


def ok_lines(p):
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == "done", p.stdout + p.stderr
    return [l for l in p.stdout.splitlines() if l.startswith("ok ")]


def iommufs_mounts():
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if " - fuse.iommufs " in l]


def host_dev_state():
    """What a run must not change: /dev's entries, mounts under /dev, and
    /dev's own times."""
    st = os.stat("/dev")
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(l.split()[4] for l in f if l.split()[4].startswith("/dev"))
    return sorted(os.listdir("/dev")), mounts, st.st_mtime_ns, st.st_ctime_ns


# -- programs against the emulator ----------------------------------------------------------

def test_dma_then_close_and_reopen_leaves_nothing(bins):
    """Without --mount: a mount is made for the run and removed after. The
    program's device DMA lands in its own buffer; closing everything (no
    unmap, no detach) and reopening at once finds the device free and IDs
    back at 1, three times."""
    p = iommufs_run("sh", "-c", f'echo "$IOMMUFS_ROOT"; exec {bins["run_dma"]} {PLAIN} 0 3 20')
    root = p.stdout.splitlines()[0]
    lines = ok_lines(p)
    for r in (1, 2, 3):
        assert f"ok round {r} ids 1 2 3" in lines
        assert f"ok round {r} device wrote our buffer" in lines
        assert f"ok round {r} device read our buffer" in lines
    assert root.startswith("/")
    assert root not in iommufs_mounts()
    assert not os.path.exists(root)


def test_threads_share_one_fd(mount, bins):
    lines = ok_lines(iommufs_run(bins["run_threads"], 8, 40, mount=mount.path))
    assert lines == ["ok 8 threads x 40 iterations", "ok live ids distinct", "ok nothing left"]


def test_forked_child_uses_parent_fds_with_its_own_memory(mount, bins):
    lines = ok_lines(iommufs_run(bins["run_fork"], PLAIN, 0, mount=mount.path))
    assert lines == ["ok device read the child's memory",
                     "ok device read the parent's memory at the parent's mapping",
                     "ok device wrote the child's memory",
                     "ok parent's memory untouched",
                     "ok parent's context survived the child's close"]


def test_fault_queue_fd_from_an_ioctl(mount, bins):
    """IOMMU_FAULT_QUEUE_ALLOC hands the program a real fault fd: it polls,
    reads the fault of a PRI DMA, answers it and the DMA completes; with no
    fd to give the ioctl fails with EMFILE and leaves no object. Without
    the shim the field stays -1."""
    p = iommufs_run(bins["run_fault"], *PRI, mount=mount.path)
    assert ok_lines(p) == ["ok out_fault_fd is an fd", "ok fault object busy",
                           "ok fault record read from the fault fd",
                           "ok DMA completed after the page response",
                           "ok EMFILE leaves no object"]
    p = iommufs_run(bins["run_fault"], "alloc-only", mount=mount.path)
    assert p.stdout == "out_fault_fd 4\n"        # the lowest free fd, as the kernel's
    p = iommufs_run("env", "-u", "LD_PRELOAD", bins["run_fault"], "alloc-only", mount=mount.path)
    assert p.stdout == "out_fault_fd -1\n"


def test_close_of_returned_fds_is_synchronous(mount, bins):
    """A fault fd and an access fd the shim handed out are closed as the
    kernel closes them: IOMMU_DESTROY of the FAULT object right after the
    close succeeds, MD_CHECK_REFS right after the access fd's close counts
    no pin; the last reference sends IOMMUFS_SYNC_CLOSE, a dup's close
    before it is plain (the object stays busy, as in the kernel)."""
    env = dict(client_env(), IOMMUFS_DEBUG="1")
    p = iommufs_run(bins["run_close"], mount=mount.path, env=env)
    assert ok_lines(p) == ["ok DESTROY right after close of the fault fd",
                           "ok a dup keeps the fault fd; its close releases it",
                           "ok no pin left right after close of the access fd"]
    trace = [re.sub(r"^iommufs-preload\[\d+\]: ", "", l) for l in p.stderr.splitlines()
             if l.startswith("iommufs-preload[")]
    assert [re.sub(r"fds/(fault|access)-\d+", r"fds/\1-N", l) for l in trace[1:]] == [
        "open /dev/iommu -> fd 3: iommu",
        "ioctl 3b8e on fd 3: fds/fault-N -> fd 4", "close fd 4: last reference, sync close -> 0",
        "ioctl 3b8e on fd 3: fds/fault-N -> fd 4", "dup fd 4 -> 5",
        "close fd 4: other fds remain, plain close", "close fd 5: last reference, sync close -> 0",
        "ioctl 3ba0 on fd 3: fds/access-N -> fd 4", "close fd 4: last reference, sync close -> 0",
        "close fd 3: last reference, sync close -> 0"], p.stderr


def test_close_tears_down_only_the_last_reference(mount, bins):
    """dup/dup2/dup3/F_DUPFD_CLOEXEC and fork keep the open file alive
    through the other fds; the shim's trace shows which close was
    synchronous."""
    env = dict(client_env(), IOMMUFS_DEBUG="1")
    p = iommufs_run(bins["run_fds"], 0, mount=mount.path, env=env)
    lines = ok_lines(p)
    assert lines == ["ok dup keeps the context", "ok F_DUPFD_CLOEXEC keeps the context",
                     "ok dup2 keeps the context", "ok dup3 keeps the context",
                     "ok dup2 target now names the first context", "ok VFIO dup binds",
                     "ok child's fd works after the parent closed",
                     "ok parent's fd works after the child closed", "ok fresh context"]
    trace = [re.sub(r"^iommufs-preload\[\d+\]: ", "", l) for l in p.stderr.splitlines()
             if l.startswith("iommufs-preload[")]
    assert "close fd 100: other fds remain, plain close" in trace
    assert "close fd 60: last reference, sync close -> 0" in trace
    # dup2 over the last fd of the second context closes it for good first
    i = trace.index("open /dev/iommu -> fd 4: iommu", trace.index("close fd 60: last reference, sync close -> 0"))
    assert trace[i + 1] == "close fd 4: last reference, sync close -> 0"
    assert trace[i + 2] == "dup fd 3 -> 4"
    # after fork, both sides close plainly: the other still uses the file
    forks = [j for j, l in enumerate(trace) if l == "fork: 1 open file(s) now shared"]
    assert len(forks) == 2
    assert trace.count("close fd 3: shared, plain close") == 4
    assert trace[-1] == "close fd 3: last reference, sync close -> 0"


def test_files_other_processes_hold_are_never_torn_down(mount, bins):
    """posix_spawn and vfork children inheriting the fd, and an SCM_RIGHTS
    receiver, use the open file after the program's close; an O_CLOEXEC fd
    across system() and close_range() still get the synchronous close."""
    env = dict(client_env(), IOMMUFS_DEBUG="1")
    p = iommufs_run(bins["run_spawn"], mount=mount.path, env=env)
    assert ok_lines(p) == ["ok posix_spawn child uses the file after our close",
                           "ok vfork child uses the file after our close", "ok system",
                           "ok SCM_RIGHTS receiver uses the file after our close",
                           "ok close_range"]
    trace = [re.sub(r"^iommufs-preload\[\d+\]: ", "", l) for l in p.stderr.splitlines()]
    assert trace[1:] == [
        "open /dev/iommu -> fd 3: iommu", "posix_spawn: 1 open file(s) now shared",
        "close fd 3: shared, plain close",
        "open /dev/iommu -> fd 3: iommu", "vfork: 1 open file(s) now shared",
        "close fd 3: shared, plain close",
        "open /dev/iommu -> fd 3: iommu", "close fd 3: last reference, sync close -> 0",
        "open /dev/iommu -> fd 5: iommu", "SCM_RIGHTS of fd 5: shared",
        "close fd 5: shared, plain close",
        "open /dev/iommu -> fd 3: iommu", "open /dev/iommu -> fd 4: iommu",
        "close fd 3: last reference, sync close -> 0",
        "close fd 4: last reference, sync close -> 0"], p.stderr


def test_stat_and_fstat_report_character_devices(mount, bins):
    """Every stat call (stat, lstat, fstatat, statx, fstat, the pre-2.33
    __xstat/__fxstat, statx on the fd) sees S_IFCHR with the documented
    numbers; other files are untouched; without the shim the nodes are
    regular files."""
    paths = ["/dev/iommu", "/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio3", "/dev/null",
             bins["run_stat"]]
    p = iommufs_run(bins["run_stat"], *paths, mount=mount.path)
    assert p.returncode == 0, p.stderr
    calls = ["stat", "lstat", "fstatat", "__xstat", "statx"]
    fdcalls = ["fstat", "__fxstat", "fstatx"]
    want = {"/dev/iommu": "chr 10:123", "/dev/vfio/devices/vfio0": "chr 511:0",
            "/dev/vfio/devices/vfio3": "chr 511:3", "/dev/null": "chr 1:3"}
    got = p.stdout.splitlines()
    for path, w in want.items():
        for c in calls + fdcalls:
            assert f"{path} {c} {w}" in got, p.stdout
    for c in calls:
        assert f"{bins['run_stat']} {c} notchr 0:0" in got
    bare = iommufs_run("env", "-u", "LD_PRELOAD", bins["run_stat"], "/dev/iommu", mount=mount.path)
    assert "/dev/iommu stat notchr 0:0" in bare.stdout.splitlines()


# -- the command: exit status, signals, stdio ----------------------------------------------

@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 7", 7),
                                            ("kill -KILL $$", 128 + 9),
                                            ("kill -SEGV $$", 128 + 11)])
def test_exit_status(mount, script, status):
    assert iommufs_run("sh", "-c", script, mount=mount.path).returncode == status


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "TERM"), (signal.SIGINT, "INT"),
                                       (signal.SIGHUP, "HUP")])
def test_signals_are_forwarded(mount, sig, name):
    script = f'trap "echo got-{name}; exit 5" {name}; echo ready; while :; do sleep 0.05; done'
    p = subprocess.Popen(run_cmd("sh", "-c", script, mount=mount.path), cwd=ROOT,
                         env=client_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(sig)
        out = p.stdout.read()
        assert p.wait(60) == 5
        assert out == f"got-{name}\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stdio_pass_through(mount):
    p = iommufs_run("sh", "-c", "cat; echo to-stderr >&2", mount=mount.path,
                    input="line one\nline two\n")
    assert p.returncode == 0
    assert p.stdout == "line one\nline two\n"
    assert p.stderr == "to-stderr\n"


def test_failures_of_the_command_itself(mount, tmp_path):
    p = iommufs_run("no-such-program-iommufs", mount=mount.path)
    assert p.returncode == 127
    assert "no-such-program-iommufs" in p.stderr
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    p = iommufs_run(str(plain), mount=mount.path)
    assert p.returncode == 126
    p = iommufs_run("true", mount=str(tmp_path))
    assert p.returncode == 125
    assert "no iommufs mounted" in p.stderr


def test_existing_ld_preload_is_kept(mount, bins):
    env = dict(client_env(), LD_PRELOAD=bins["marker"])
    p = iommufs_run("sh", "-c", 'echo "$LD_PRELOAD"', mount=mount.path, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{bins['marker']}:{shim()}\n"
    assert "marker loaded" in p.stderr


# -- /dev inside and outside ----------------------------------------------------------------

DEV_CHECK = r"""
import os, stat, sys
assert stat.S_ISCHR(os.stat("/dev/iommu").st_mode)
nodes = sorted(os.listdir(os.environ["IOMMUFS_ROOT"] + "/vfio/devices"))
assert nodes[:2] == ["vfio0", "vfio1"] and sorted(os.listdir("/dev/vfio/devices")) == nodes
legacy = [n for n in os.listdir(os.environ["IOMMUFS_ROOT"] + "/vfio") if n != "devices"]
assert sorted(os.listdir("/dev/vfio")) == sorted(["devices"] + legacy) and "vfio" in legacy
with open("/dev/null", "w") as f:
    f.write("x")
with open("/dev/zero", "rb") as f:
    assert f.read(4) == b"\0\0\0\0"
with open("/dev/urandom", "rb") as f:
    assert len(f.read(16)) == 16
assert os.readlink("/dev/fd") == "/proc/self/fd"
assert os.readlink("/dev/stdin") == "/proc/self/fd/0"
assert os.path.realpath("/dev/stdout") == os.path.realpath("/proc/self/fd/1")
null = os.stat("/dev/null")
assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
master, slave = os.openpty()                       # /dev/ptmx and /dev/pts
assert os.ttyname(slave).startswith("/dev/pts/")
with open(sys.argv[1], "w") as f:                  # /dev/shm is the host's
    f.write("from inside")
print("inside ok", os.getuid())
"""


@pytest.mark.parametrize("user", [None, "65534"])
def test_dev_inside_the_namespace_works(mount, bins, user):
    shm = f"/dev/shm/iommufs-run-test-{os.getpid()}-{user}"
    script = os.path.join(os.path.dirname(bins["run_dma"]), "devcheck.py")
    with open(script, "w") as f:
        f.write(DEV_CHECK)
    os.chmod(script, 0o644)
    extra = ("--user", user) if user else ()
    # The system Python: the test's own may live where --user cannot read.
    py = shutil.which("python3", path="/usr/bin:/bin")
    try:
        if user:
            # make the shm file writable by that user too
            open(shm, "w").close()
            os.chmod(shm, 0o666)
        p = iommufs_run(py, script, shm, mount=mount.path, extra=extra)
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout == f"inside ok {user or 0}\n"
        with open(shm) as f:
            assert f.read() == "from inside"
    finally:
        if os.path.exists(shm):
            os.unlink(shm)


def test_host_dev_untouched_during_and_after(mount):
    before = host_dev_state()
    p = subprocess.Popen(run_cmd("sh", "-c", "test -c /dev/iommu && echo inside; read x; echo bye",
                                 mount=mount.path),
                         cwd=ROOT, env=client_env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "inside\n"
        during = host_dev_state()
        out, _ = p.communicate("go\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out == "bye\n" and p.returncode == 0
    assert during == before
    assert host_dev_state() == before


def test_user_option_runs_as_that_user(mount, bins):
    p = iommufs_run("sh", "-c", f"id -u; id -g; exec {bins['run_threads']} 2 5",
                    mount=mount.path, extra=("--user", "65534"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[:2] == ["65534", "65534"]
    assert p.stdout.splitlines()[-1] == "done"


def test_non_root_caller_gets_a_user_namespace(mount, bins, tmp_path):
    """A non-root caller (uid 1000, as a login process: dumpable) runs with
    --mount in a user namespace mapping only its own ids."""
    from devfs import run as runmod

    if subprocess.run(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
                       "unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged user namespaces are disabled here")
    out = tmp_path / "out"
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o666)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.setgroups([])
            os.setgid(1000)
            os.setuid(1000)
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)       # PR_SET_DUMPABLE
            rc = runmod.run(["sh", "-c", f"id -u; exec {bins['run_dma']} {PLAIN} 0 2"],
                            mount.path)
        except BaseException as e:
            os.write(2, repr(e).encode())
            rc = 99
        os._exit(rc)
    _, status = os.waitpid(pid, 0)
    text = out.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, text
    lines = text.splitlines()
    assert lines[0] == "1000"
    assert "ok round 2 device wrote our buffer" in lines and lines[-1] == "done"


# -- the shim without iommufs run -----------------------------------------------------------

def test_shim_alone_redirects_dev_paths(mount, bins):
    """LD_PRELOAD and IOMMUFS_ROOT by hand, no namespace: the fortified
    open (__open_2) and stat calls of /dev/iommu and /dev/vfio/devices/vfioN
    reach the mount's nodes."""
    assert "__open_2" in subprocess.run(["nm", "-u", bins["run_dma"]], capture_output=True,
                                        text=True).stdout
    env = dict(client_env(), LD_PRELOAD=shim(), IOMMUFS_ROOT=mount.path)
    p = subprocess.run([bins["run_dma"], PLAIN, "0", "2"], env=env, capture_output=True,
                       text=True, timeout=60)
    lines = ok_lines(p)
    assert "ok round 2 ids 1 2 3" in lines
    p = subprocess.run([bins["run_stat"], "/dev/iommu", "/dev/vfio/devices/vfio4"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert "/dev/iommu fstat chr 10:123" in p.stdout.splitlines()
    assert "/dev/vfio/devices/vfio4 stat chr 511:4" in p.stdout.splitlines()
    # IOMMUFS_REDIRECT=0: the paths are left alone (iommufs run's setting)
    p = subprocess.run([bins["run_stat"], "/dev/iommu"], env=dict(env, IOMMUFS_REDIRECT="0"),
                       capture_output=True, text=True, timeout=60)
    if not os.path.exists("/dev/iommu"):
        assert "/dev/iommu stat error" in p.stdout.splitlines()


def test_shim_is_silent_and_inert_elsewhere(mount, bins, tmp_path):
    """Without IOMMUFS_DEBUG the shim prints nothing; with IOMMUFS_ROOT
    naming something that is not an iommufs it changes nothing."""
    env = dict(client_env(), LD_PRELOAD=shim(), IOMMUFS_ROOT=mount.path)
    p = subprocess.run([bins["run_fds"], "0"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stderr == ""
    env = dict(client_env(), LD_PRELOAD=shim(), IOMMUFS_ROOT=str(tmp_path), IOMMUFS_DEBUG="1")
    target = os.path.join(mount.path, "iommu")
    local = tmp_path / "file"           # on IOMMUFS_ROOT's filesystem: checked, refused
    local.write_text("")
    p = subprocess.run([bins["run_stat"], target, str(local)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert f"{target} stat notchr 0:0" in p.stdout.splitlines()
    assert f"{local} fstat notchr 0:0" in p.stdout.splitlines()
    assert "is not an iommufs mount: inert" in p.stderr


def test_own_mount_removed_when_the_program_is_killed():
    p = iommufs_run("sh", "-c", 'echo "$IOMMUFS_ROOT"; kill -KILL $$')
    assert p.returncode == 128 + 9
    root = p.stdout.splitlines()[0]
    assert root not in iommufs_mounts()
    assert not os.path.exists(root)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert root.encode() not in f.read(), f"server {pid} still running"
        except OSError:
            pass
