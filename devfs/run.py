"""``iommufs run``: an unmodified program against an iommufs mount.

::

    iommufs run [--mount MNT] [--topology FILE] [--user USER] [--log FILE] -- PROGRAM ARGS...

PROGRAM runs in a private mount namespace whose ``/dev`` is the host's plus
the emulated nodes:

- ``/dev/iommu`` is a bind mount of ``<mnt>/iommu``;
- ``/dev/vfio/devices/vfioN`` are bind mounts of ``<mnt>/vfio/devices/vfioN``
  (one per topology device); ``/dev/vfio/vfio`` (the legacy container) and
  ``/dev/vfio/N`` (one per IOMMU group) of ``<mnt>/vfio/``;
- everything else is the host's ``/dev`` as it was when the program started.

How that ``/dev`` is built (the host's ``/dev`` is never written): the child
unshares its mount namespace and makes every mount a slave of the host's
(host mounts still propagate in, nothing propagates out), keeps an
detached recursive copy of the host ``/dev`` (``open_tree(OPEN_TREE_CLONE)``),
mounts a tmpfs over ``/dev`` and moves the copy to ``/dev/.iommufs-host``;
each host entry is then re-created at its own name: a symlink as the same
symlink (``fd``, ``stdin``, ...), a directory as a recursive bind mount
(``pts``, ``shm``, ``mqueue`` with their mounts), any other file as a bind
mount of the host's (``null``, ``zero``, ``urandom``, ``tty``, ...), so
stat, lstat, ownership, modes and device numbers are the host's.
``/dev/ptmx`` is the exception: the kernel finds the devpts instance of a
ptmx open through the ``pts`` directory next to it in the same mount, which
a single-file bind mount does not have; so it is a device node made in the
tmpfs (same numbers, mode and owner), and in a user namespace (no mknod
there) a symlink to ``.iommufs-host/ptmx`` (new ptys are then named
``/dev/.iommufs-host/pts/N``; a ``pts/ptmx`` symlink would not do: devpts
usually has ``ptmxmode=000``). Entries the host adds later appear under
``.iommufs-host`` only. An overlay of the host ``/dev`` was the other
candidate: it needs overlayfs with trusted xattrs on the upper layer and
cannot serve device nodes in a user namespace; bind mounts work everywhere.

The program gets ``LD_PRELOAD`` with ``libiommufs-preload.so`` appended
(an existing value is kept, first), ``IOMMUFS_ROOT`` (the mount root; use it
for ``<mnt>/devices/<name>/dma``) and ``IOMMUFS_REDIRECT=0`` (the /dev paths
already are the nodes). It runs with the invoking user's credentials (root
stays root; ``--user`` switches to another user after the namespace is
built). Without root, the namespace is a user namespace mapping only the
caller's uid and gid (needs unprivileged user namespaces, and ``--mount``:
only root can start a server).

Without ``--mount``, an iommufs is mounted on a fresh directory first (its
server in its own session, killed by SIGTERM if this process dies) and
unmounted afterwards.

Exit status: the program's, or 128+N if signal N killed it; 125 if
``iommufs run`` itself failed, 126 if PROGRAM could not be executed, 127 if
it was not found. stdin, stdout and stderr are the program's own. SIGINT,
SIGTERM, SIGHUP and SIGQUIT sent to ``iommufs run`` are forwarded to the
program, except when the terminal sent them (they reached the program
already: it is in the same process group).
"""
import ctypes
import grp
import os
import pwd
import re
import signal
import stat
import sys
import tempfile

import cext

from . import sysfs
from .mount import spawn_server, umount

SHIM_NAME = "libiommufs-preload.so"
HOST_DIR = ".iommufs-host"

EXIT_FAILED = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
PR_SET_PDEATHSIG = 1
SYS_open_tree = 428            # the same number on every architecture (5.2+)
SYS_move_mount = 429
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
SI_KERNEL = 0x80

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)


class RunError(Exception):
    """``iommufs run`` could not do its part (exit status 125)."""


def _check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source, target, fstype=None, flags=0, data=None):
    """mount(2); OSError(errno) on failure."""
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
           f"mount {source} on {target}")


def unshare(flags):
    """unshare(2) (Python 3.11 has no os.unshare); OSError on failure."""
    _check(_libc.unshare(flags), "unshare")


def shim_path():
    """Absolute path of libiommufs-preload.so (built next to the cext
    package by the install or scripts/setup.sh). RunError if missing."""
    path = os.path.join(os.path.dirname(os.path.abspath(cext.__file__)), SHIM_NAME)
    if not os.path.exists(path):
        raise RunError(f"{path} is not built: run `python3 cext/build_preload.py` "
                       "(or scripts/setup.sh install)")
    if re.search(r"[\s:]", path):
        raise RunError(f"{path}: LD_PRELOAD cannot name a path with spaces or colons")
    return path


def vfio_nodes(mnt):
    """Node names under ``<mnt>/vfio/devices`` (``vfio0``, ...), in numeric order."""
    names = [n for n in os.listdir(os.path.join(mnt, "vfio", "devices"))
             if re.fullmatch(r"vfio\d+", n)]
    return sorted(names, key=lambda n: int(n[4:]))


def program_env(env, mnt, shim):
    """The program's environment: ``env`` plus the shim and the mount root."""
    env = dict(env)
    pre = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{pre}:{shim}" if pre else shim
    env["IOMMUFS_ROOT"] = mnt
    env["IOMMUFS_REDIRECT"] = "0"
    return env


def server_env(env, shim):
    """The server's environment: never the shim (a preloaded server would
    stat its own mount from the thread that serves it)."""
    env = {k: v for k, v in env.items() if not k.startswith("IOMMUFS_")}
    pre = [p for p in re.split(r"[\s:]+", env.get("LD_PRELOAD", "")) if p
           and os.path.basename(p) != SHIM_NAME]
    if pre:
        env["LD_PRELOAD"] = ":".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    return env


# -- the namespace (runs in the child, between fork and exec) ---------------------------

def _bind(source, target, recursive=False):
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))


def _place(source, target):
    """Re-create host entry ``source`` at ``target`` (see the module docstring)."""
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(target, 0o755)
        _bind(source, target, recursive=True)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        _bind(source, target)


def _clone_tree(path):
    """A detached recursive copy of the mounts at ``path`` (an fd):
    open_tree(2) with OPEN_TREE_CLONE | AT_RECURSIVE."""
    fd = _libc.syscall(SYS_open_tree, -100, os.fsencode(path),
                       OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"open_tree {path}: {os.strerror(e)}")
    return fd


def _move_tree(fd, target):
    r = _libc.syscall(SYS_move_mount, fd, b"", -100, os.fsencode(target),
                      MOVE_MOUNT_F_EMPTY_PATH)
    _check(0 if r == 0 else -1, f"move_mount to {target}")


def _ptmx(source, target):
    """/dev/ptmx: a device node of its own in the tmpfs (root), so that the
    kernel finds ``/dev/pts`` next to it and new ptys are ``/dev/pts/N``;
    in a user namespace (no mknod) a symlink to the host's."""
    st = os.lstat(source)
    if os.geteuid() == 0 and stat.S_ISCHR(st.st_mode):
        os.mknod(target, st.st_mode, st.st_rdev)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.chown(target, st.st_uid, st.st_gid)
    else:
        os.symlink(f"{HOST_DIR}/ptmx", target)


def build_dev(mnt, nodes, dev="/dev"):
    """Replace ``dev`` in this (private) mount namespace by a tmpfs holding
    the host's entries and the iommufs nodes of ``mnt`` (``nodes``: the
    vfioN names). OSError on failure."""
    # A copy taken before the tmpfs covers the host /dev: a path through an
    # fd of the host /dev would cross into the tmpfs mounted on top of it.
    host = _clone_tree(dev)
    try:
        mount("iommufs-dev", dev, "tmpfs", MS_NOSUID, "mode=0755")
        keep = os.path.join(dev, HOST_DIR)
        os.mkdir(keep, 0o755)
        _move_tree(host, keep)
    finally:
        os.close(host)
    for name in sorted(os.listdir(keep)):
        if name in ("iommu", "vfio"):
            continue
        if name == "ptmx":
            _ptmx(os.path.join(keep, name), os.path.join(dev, name))
            continue
        _place(os.path.join(keep, name), os.path.join(dev, name))
    _place(os.path.join(mnt, "iommu"), os.path.join(dev, "iommu"))
    vdir = os.path.join(dev, "vfio", "devices")
    os.makedirs(vdir, 0o755)
    for n in nodes:
        _place(os.path.join(mnt, "vfio", "devices", n), os.path.join(vdir, n))
    # The legacy API (vfio-device.md §10): /dev/vfio/vfio and /dev/vfio/N.
    for n in sorted(os.listdir(os.path.join(mnt, "vfio"))):
        if n == "vfio" or n.isdigit():
            _place(os.path.join(mnt, "vfio", n), os.path.join(dev, "vfio", n))


def _user_namespace():
    """Become root-equivalent in a new user namespace mapping only our ids."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | CLONE_NEWNS)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def resolve_user(spec):
    """``USER``, ``UID`` or ``UID:GID`` -> (uid, gid, groups). RunError if unknown."""
    name, _, gpart = spec.partition(":")
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        pw = None
    if pw is None and not name.isdigit():
        raise RunError(f"no user {name!r}")
    uid = pw.pw_uid if pw else int(name)
    gid = pw.pw_gid if pw else uid
    if gpart:
        try:
            gid = int(gpart) if gpart.isdigit() else grp.getgrnam(gpart).gr_gid
        except KeyError:
            raise RunError(f"no group {gpart!r}") from None
    groups = os.getgrouplist(pw.pw_name, gid) if pw else [gid]
    return uid, gid, groups


def _child(mnt, nodes, argv, env, user, mask, err_w, infos=()):
    """Set up the namespace and exec; never returns. Failures are written to
    ``err_w`` as ``"<status> <message>"``."""
    status = EXIT_FAILED
    try:
        for s in (signal.SIGPIPE, signal.SIGXFSZ):   # Python ignores them; programs must not
            signal.signal(s, signal.SIG_DFL)
        if os.geteuid() == 0:
            unshare(CLONE_NEWNS)
        else:
            _user_namespace()
        mount(None, "/", None, MS_REC | MS_SLAVE)
        build_dev(mnt, nodes)
        try:
            sysfs.build_sysfs(infos, mount)
        except OSError:
            # A user namespace may not cover the host's sysfs: programs that
            # open by path still run; only sysfs lookups miss the devices.
            if os.geteuid() == 0:
                raise
        if user is not None:
            uid, gid, groups = user
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        status = EXIT_CANNOT_EXEC
        os.execvpe(argv[0], argv, env)
    except BaseException as e:
        if isinstance(e, FileNotFoundError) and status == EXIT_CANNOT_EXEC:
            status = EXIT_NOT_FOUND
        msg = f"{argv[0]}: {e}" if status != EXIT_FAILED else f"namespace: {e}"
        try:
            os.write(err_w, f"{status} {msg}".encode(errors="replace"))
        finally:
            os._exit(status)


def _server_preexec():
    # The server started for this run dies with it (SIGTERM unmounts cleanly).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _start_own_mount(topology, log, shim):
    if os.geteuid() != 0:
        raise RunError("only root can mount an iommufs: run as root or pass --mount")
    mnt = os.path.realpath(tempfile.mkdtemp(prefix="iommufs-run-"))
    proc, err = spawn_server(mnt, topology, log=log, env=server_env(os.environ, shim),
                             preexec_fn=_server_preexec)
    if err is not None:
        os.rmdir(mnt)
        raise RunError(f"mount failed: {err}")
    return mnt, proc


def _stop_own_mount(mnt, proc):
    umount(mnt)
    try:
        proc.wait(10)
    except Exception:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait()
    try:
        os.rmdir(mnt)
    except OSError:
        pass


def _wait_forwarding(pid):
    """Wait for ``pid``, forwarding FORWARDED signals (blocked by the caller)
    that did not come from the terminal. Returns its wait status."""
    waitset = set(FORWARDED) | {signal.SIGCHLD}
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        info = signal.sigwaitinfo(waitset)
        if info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code == SI_KERNEL:
            continue          # the terminal's: the program (same process group) has it
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass


def run(argv, mnt=None, topology=None, user=None, log=None):
    """Run ``argv`` (program and arguments) against the iommufs at ``mnt``
    (mounted for the run if None, with ``topology``). ``user``: a
    ``resolve_user`` spec or None. Returns the exit status described in the
    module docstring; RunError if this side fails before the program runs."""
    if not argv:
        raise RunError("no program given")
    shim = shim_path()
    if user is not None:
        if os.geteuid() != 0:
            raise RunError("--user needs root")
        user = resolve_user(user)
    own = None
    if mnt is None:
        mnt, proc = _start_own_mount(topology, log, shim)
        own = proc
    else:
        from .session import mount_fstype

        mnt = os.path.realpath(mnt)
        if mount_fstype(mnt) != "fuse.iommufs":
            raise RunError(f"no iommufs mounted at {mnt}")
    waited = set(FORWARDED) | {signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        nodes = vfio_nodes(mnt)
        infos = sysfs.read_infos(mnt)
        env = program_env(os.environ, mnt, shim)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            _child(mnt, nodes, argv, env, user, mask, err_w, infos)
        os.close(err_w)
        with os.fdopen(err_r, "rb") as f:
            failure = f.read()            # EOF at the exec: the program runs
        status = _wait_forwarding(pid)
        if failure:
            code, _, msg = failure.decode(errors="replace").partition(" ")
            print(f"iommufs run: {msg}", file=sys.stderr)
            return int(code)
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code
    finally:
        if own is not None:
            _stop_own_mount(mnt, own)
        # Signals that came after the program ended were for it: drop them.
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
