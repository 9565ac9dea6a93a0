"""Mount fixtures.

Subprocess servers (``python -m devfs.cli mount DIR --foreground``), for
integration, signal and crash tests; tests talk to them with plain blocking
syscalls from their own threads or from client processes:

- ``mount`` (module scope): core's real Emulator, built-in topology;
- ``fake_mount`` (module scope): tests/fake_emulator.py's FakeEmulator;
- ``mount_factory`` (function scope): ``mount_factory(emulator=None,
  path=None, args=())`` starts one more server (``emulator``: a
  ``MODULE:CALLABLE`` spec; None = the real one, ``FAKE`` = the fake) and
  stops every server it started at teardown.

Each yields a :class:`Mount`: ``path`` (the mount point), ``pid`` (the
server process), ``proc`` (its Popen), ``log`` (its stderr, a file path).
The mount is up when the fixture returns: the server reports it on a
readiness pipe (``--ready-fd``) and /proc/self/mountinfo shows it; never a
stat() on the mount. Teardown: ``fusermount3
-u``, then ``-u -z`` if files are still open, then SIGKILL.

In-process (pytest-trio), for fast tests that need the server's objects:

- ``inproc_mount``: a Session + Server running in this test's trio loop
  (the FUSE loop in a thread of the test process) on ``inproc_emulator``
  (a FakeEmulator unless a test overrides that fixture, e.g. with a real
  core.emulator.Emulator). Yields an :class:`InProc` (``path``,
  ``session``, ``server``, ``emulator``). All client I/O must leave the trio
  thread (``trio.to_thread.run_sync`` or a subprocess): the trio thread
  serves deferred replies, and blocking it on the mount deadlocks.

Mount points are fresh directories under /tmp, removed after unmount.
"""
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
FAKE = "fake_emulator:FakeEmulator"

if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


def _fstype_at(path):
    """The fstype mounted exactly at ``path`` (from mountinfo) or None."""
    from devfs.session import mount_fstype

    return mount_fstype(path)


def mount_id(path):
    """The mount ID (mountinfo's first field, never reused while mounted) of
    the topmost mount exactly at ``path``, or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path:
                found = int(parts[0])
    return found


def abort_connection(path):
    """Abort the FUSE connection of the mount at ``path`` (fusectl), the way
    out when its server can no longer answer (e.g. its process is stuck on
    its own mount). Returns True if it did."""
    from devfs.session import mount_dev

    dev = mount_dev(path)
    if dev is None:
        return False
    conns = "/sys/fs/fuse/connections"
    abort = f"{conns}/{os.minor(dev)}/abort"
    if not os.path.exists(abort):
        subprocess.run(["mount", "-t", "fusectl", "none", conns], capture_output=True)
    try:
        with open(abort, "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


def build_c(out_dir, name, *flags):
    """Compile the test program ``tests/c/<name>.c`` into ``out_dir`` with
    gcc (warnings are errors); returns the executable's path (str)."""
    exe = os.path.join(str(out_dir), name)
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", *flags, "-o", exe,
                    os.path.join(TESTS, "c", name + ".c")], check=True)
    return exe


def client_env():
    """Environment for client and server subprocesses: the repo and tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, TESTS, env.get("PYTHONPATH")) if p)
    return env


class Mount:
    """A server subprocess and its mount point (see the module docstring)."""

    def __init__(self, path, proc, log):
        self.path = path
        self.proc = proc
        self.pid = proc.pid
        self.log = log

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def mounted(self):
        return _fstype_at(self.path) == "fuse.iommufs"

    def __repr__(self):
        return f"<Mount {self.path} pid {self.pid}>"


def start_server(path=None, emulator=None, args=(), timeout=20.0):
    """Start ``iommufs mount PATH --foreground`` and wait until it is mounted.

    ``emulator``: None (core's), or a ``MODULE:CALLABLE`` spec (``FAKE``).
    Raises RuntimeError with the server's log if it does not come up.
    """
    path = os.path.realpath(path or tempfile.mkdtemp(prefix="iommufs-test-"))
    log = tempfile.NamedTemporaryFile(prefix="iommufs-server-", suffix=".log", delete=False)
    # The server says "ready" on this pipe once mounted: exact even where a
    # stale mount sits at the same path (dev and mount ID get reused).
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "devfs.cli", "mount", path, "--foreground",
           "--ready-fd", str(w), *args]
    if emulator:
        cmd += ["--emulator", emulator]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=client_env(), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, pass_fds=(w,))
    os.close(w)
    log.close()
    m = Mount(path, proc, log.name)
    got = b""
    try:
        end = time.monotonic() + timeout
        while not got.endswith(b"\n") and time.monotonic() < end:
            ready, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(r)
    if got.strip() != b"ready" or not m.mounted():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not mount {path} (rc {proc.returncode}):\n{m.log_text()}")
    return m


def stop_server(m, timeout=10.0, remove=True):
    """Unmount and stop ``m``: fusermount3 -u (-u -z if files are open),
    then -u -z again, then SIGKILL.

    Returns the server's exit status.
    """
    if m.proc.poll() is None:
        if subprocess.run(["fusermount3", "-u", m.path], capture_output=True).returncode != 0:
            # Files still open (EBUSY): detach it, as ``iommufs umount``
            # does; the server sees the mount go and ends.
            subprocess.run(["fusermount3", "-u", "-z", m.path], capture_output=True)
        try:
            m.proc.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", m.path], capture_output=True)
            try:
                m.proc.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                abort_connection(m.path)
                m.proc.kill()
                m.proc.wait()
    # A server killed with its auto_unmount helper leaves the mount behind.
    if _fstype_at(m.path) is not None:
        subprocess.run(["fusermount3", "-u", "-z", m.path], capture_output=True)
    if remove:
        try:
            os.rmdir(m.path)
        except OSError:
            pass
        try:
            os.unlink(m.log)
        except OSError:
            pass
    return m.proc.returncode


@pytest.fixture(scope="module")
def mount():
    """A mount served by core's real Emulator (built-in topology)."""
    m = start_server()
    yield m
    stop_server(m)


@pytest.fixture(scope="module")
def fake_mount():
    """A mount served by tests/fake_emulator.py's FakeEmulator."""
    m = start_server(emulator=FAKE)
    yield m
    stop_server(m)


@pytest.fixture
def mount_factory():
    """``start(emulator=None, path=None, args=()) -> Mount``; all stopped at teardown."""
    started = []

    def start(emulator=None, path=None, args=()):
        m = start_server(path, emulator, args)
        started.append(m)
        return m

    yield start
    for m in started:
        stop_server(m)


class InProc:
    """An in-process mount: ``path``, ``session``, ``server``, ``emulator``."""

    def __init__(self, path, session, server, emulator):
        self.path = path
        self.session = session
        self.server = server
        self.emulator = emulator


@pytest.fixture
def inproc_emulator():
    """The emulator of ``inproc_mount``: override this fixture to use another."""
    from fake_emulator import FakeEmulator

    return FakeEmulator()


@pytest.fixture
async def inproc_mount(nursery, inproc_emulator):
    """A Session serving ``inproc_emulator`` in this test's trio loop."""
    import threading

    import trio

    from devfs.server import Server
    from devfs.session import Session

    path = os.path.realpath(tempfile.mkdtemp(prefix="iommufs-inproc-"))
    # A lock of its own: the test process may hold other servers.
    server = Server(inproc_emulator, lock=threading.Lock())
    session = Session(server, path)
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(task_status):
        try:
            with scope:
                await session.run(task_status=task_status)
        finally:
            done.set()

    await nursery.start(run)
    try:
        yield InProc(path, session, server, inproc_emulator)
    finally:
        scope.cancel()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await done.wait()
            if not done.is_set():
                # Never leave a test process stuck on its own mount.
                abort_connection(path)
                await done.wait()
        if _fstype_at(path) is not None:
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def server_children(pid, name):
    """Pids of ``pid``'s children whose command name is ``name``."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if ppid == pid and comm == name:
            out.append(int(p))
    return out


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``last`` run after all others (a stable sort keeps the
    order of the rest): they check what every other test left behind."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
