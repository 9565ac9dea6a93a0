"""Starting and stopping a mount's server from another process: the pieces
``iommufs mount`` (devfs.cli) and ``iommufs run`` (devfs.run) share.
"""
import os
import subprocess
import sys


def fusermount(*args):
    """Run ``fusermount3 ARGS``: the CompletedProcess (text output)."""
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def spawn_server(mountpoint, topology=None, debug=False, emulator=None, log=None, env=None,
                 preexec_fn=None):
    """Start ``iommufs mount MOUNTPOINT --foreground`` detached (its own
    session, so a terminal's ^C does not reach it) and wait until it says ready.

    Returns ``(proc, None)`` once the mount is usable, or ``(proc, reason)``
    (a str) after the server exited without mounting. ``env``: its
    environment (default: this one); ``log``: a file path for its output.
    """
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "devfs.cli", "mount", mountpoint, "--foreground",
           "--ready-fd", str(w)]
    if topology:
        cmd += ["--topology", topology]
    if debug:
        cmd.append("--debug")
    if emulator:
        cmd += ["--emulator", emulator]
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                pass_fds=(w,), start_new_session=True, env=env,
                                preexec_fn=preexec_fn)
    finally:
        os.close(w)
        if log:
            out.close()
    with os.fdopen(r, "rb") as f:
        msg = f.readline()   # one line; EOF if the child exits first
    text = msg.decode(errors="replace").strip()
    if text == "ready":
        return proc, None
    proc.wait()
    return proc, text or f"server exited with {proc.returncode}"


def umount(mountpoint):
    """Unmount ``mountpoint``: 0 on success, else fusermount3's status."""
    r = fusermount("-u", mountpoint)
    if r.returncode != 0:
        r2 = fusermount("-u", "-z", mountpoint)
        if r2.returncode != 0:
            print(f"iommufs: {r.stderr.strip() or r2.stderr.strip()}", file=sys.stderr)
            return r2.returncode
    return 0
