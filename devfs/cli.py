"""The ``iommufs`` command.

::

    iommufs mount MOUNTPOINT [--topology FILE] [--foreground] [--debug] [--log FILE]
    iommufs umount MOUNTPOINT
    iommufs run [--mount MNT] [--topology FILE] [--user USER] [--log FILE] -- PROGRAM ARGS...
    iommufs shim

``mount`` creates MOUNTPOINT if missing and first cleans a stale mount there
(a dead server's: stat or statfs gives ENOTCONN -> ``fusermount3 -u -z``). By default
it starts the server in the background and returns once the mount is usable
(exit 0), or prints why it could not (exit 1). ``--foreground`` serves in
this process until SIGINT/SIGTERM or an unmount, then unmounts cleanly.

``umount`` runs ``fusermount3 -u`` (``-u -z`` if files are still open); the
server notices and exits.

``run`` runs PROGRAM with /dev/iommu and /dev/vfio/devices/vfioN bound to a
mount's nodes and the preload shim loaded (devfs.run); ``shim`` prints the
path of the shim (libiommufs-preload.so), for LD_PRELOAD by hand.

Hidden options for tests and benchmarks: ``--emulator MODULE:CALLABLE``
builds the emulator with ``CALLABLE(topology_path_or_None)`` instead of
core's; ``--ready-fd N`` is how a background parent learns the mount is up.
"""
import argparse
import errno
import importlib
import logging
import os
import signal
import sys

from .mount import fusermount as _fusermount
from .mount import spawn_server, umount

log = logging.getLogger("iommufs.devfs")


def real_emulator(topology=None):
    """core's Emulator on the topology file ``topology`` (the built-in one if None)."""
    from core.emulator import Emulator
    from core.topology import Topology

    topo = Topology.load(topology) if topology else Topology.builtin()
    return Emulator(topo)


def _factory(spec):
    if not spec:
        return real_emulator
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name or "Emulator")


def clean_stale(mountpoint):
    """Make ``mountpoint`` a usable, empty-of-us directory.

    Creates it if missing; lazily unmounts a stale FUSE mount (its server is
    gone: a request that must reach the server fails with ENOTCONN).
    Raises OSError(EBUSY) if a live iommufs is mounted there already.
    """
    from .session import mount_fstype

    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        os.makedirs(mountpoint, exist_ok=True)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
        _unmount_stale(mountpoint)
        return
    fstype = mount_fstype(mountpoint)
    if fstype is None or not fstype.startswith("fuse"):
        return
    # stat() may be answered from attributes the kernel cached before the
    # server died (issue 8); statfs is never cached, so it reaches the
    # server or fails with ENOTCONN once the connection is gone.
    err = _statfs_errno(mountpoint)
    if err == errno.ENOTCONN:
        _unmount_stale(mountpoint)
        return
    if fstype == "fuse.iommufs":
        why = "not answering" if err == errno.ETIMEDOUT else "already mounted"
        raise OSError(errno.EBUSY, f"iommufs is {why} at {mountpoint}")


def _statfs_errno(path, timeout=3.0):
    """0 if statfs(path) succeeds, its errno if it fails, ETIMEDOUT if it has
    not returned within ``timeout`` seconds (a server alive but stuck; the
    probing thread is left behind, and FUSE waits die with the process)."""
    import threading

    out = []

    def probe():
        try:
            os.statvfs(path)
            out.append(0)
        except OSError as e:
            out.append(e.errno)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else errno.ETIMEDOUT


def _unmount_stale(mountpoint):
    r = _fusermount("-u", "-z", mountpoint)
    if r.returncode != 0:
        raise OSError(errno.EBUSY, f"cannot clean stale mount: {r.stderr.strip()}")
    log.info("cleaned a stale mount at %s", mountpoint)


def _foreground(args, ready_fd=None):
    import trio

    def fail(msg):
        log.error("%s", msg)
        if ready_fd is not None:
            os.write(ready_fd, f"error: {msg}\n".encode())
        return 1

    mnt = os.path.realpath(args.mountpoint)
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)   # not to libfuse's fusermount3 helper
    try:
        clean_stale(mnt)
        emulator = _factory(args.emulator)(args.topology)
    except Exception as e:
        return fail(f"{type(e).__name__}: {e}")

    async def main():
        try:
            await _serve_until_unmounted(emulator, mnt, args.debug, ready_fd)
        except OSError as e:
            return fail(str(e))
        return 0

    return trio.run(main)


async def _serve_until_unmounted(emulator, mnt, debug, ready_fd):
    import trio

    from .server import Server
    from .session import Session

    session = Session(Server(emulator), mnt, debug=debug)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def run_session(task_status):
                await session.run(task_status=task_status)
                nursery.cancel_scope.cancel()     # unmounted from outside

            async def stop_on_signal():
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    nursery.cancel_scope.cancel()
                    return

            await nursery.start(run_session)
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            log.info("iommufs mounted at %s", mnt)
            nursery.start_soon(stop_on_signal)


def _background(args):
    """Start ``mount --foreground`` detached and wait until it says ready."""
    proc, err = spawn_server(args.mountpoint, args.topology, args.debug, args.emulator, args.log)
    if err is None:
        print(f"iommufs mounted at {os.path.abspath(args.mountpoint)} (server pid {proc.pid})")
        return 0
    print(f"iommufs: mount failed: {err}", file=sys.stderr)
    return 1


def main(argv=None):
    """Console entry point ``iommufs`` (returns the exit status)."""
    p = argparse.ArgumentParser(prog="iommufs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount the emulator")
    m.add_argument("mountpoint")
    m.add_argument("--topology", help="TOML topology file (default: the built-in one)")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--debug", action="store_true", help="trace every FUSE request (libfuse -d)")
    m.add_argument("--log", help="log file of a background server")
    m.add_argument("--emulator", help=argparse.SUPPRESS)
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("umount", help="unmount")
    u.add_argument("mountpoint")
    r = sub.add_parser("run", help="run a program with /dev/iommu and /dev/vfio/devices/* "
                                   "from a mount (mounting one if no --mount)")
    r.add_argument("--mount", help="an iommufs mount to use (default: mount one for the run)")
    r.add_argument("--topology", help="TOML topology file of the mount made for the run")
    r.add_argument("--user", help="run the program as USER, UID or UID:GID (root only)")
    r.add_argument("--log", help="log file of the server started for the run")
    r.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    sub.add_parser("shim", help="print the path of libiommufs-preload.so")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if getattr(args, "debug", False) else logging.INFO,
                        format="iommufs[%(process)d] %(levelname)s %(message)s")
    if args.command == "umount":
        return umount(args.mountpoint)
    if args.command in ("run", "shim"):
        from . import run as runmod

        try:
            if args.command == "shim":
                print(runmod.shim_path())
                return 0
            prog = args.program[1:] if args.program[:1] == ["--"] else args.program
            if args.mount and args.topology:
                raise runmod.RunError("--topology applies to the mount made for the run, "
                                      "not to --mount")
            return runmod.run(prog, args.mount, args.topology, args.user, args.log)
        except runmod.RunError as e:
            print(f"iommufs run: {e}", file=sys.stderr)
            return runmod.EXIT_FAILED
    if args.foreground:
        return _foreground(args, args.ready_fd)
    return _background(args)


if __name__ == "__main__":
    sys.exit(main())
