"""The fuzz test of issue 8: hostile clients against a real mount.

Several client processes (tests/fuzzkit.py, which says what they send) run
at once against a server of its own for a bounded time, then the test
checks that the server survived it whole:

- every call got a result or an errno (a worker stops at the first
  ENOTCONN / ECONNABORTED: the server died) and no worker hung;
- the server process is alive, and its log has no traceback, no ERROR line
  and no AddressSanitizer / UndefinedBehaviorSanitizer report;
- once the workers closed their fds, nothing is left: no device bound,
  attached, bonded or holding PASIDs (devices' ``info``), no node under
  ``fds/``, and the server holds no fd it took for a client that it did
  not hold before (pidfds of mapping owners and SVA bonds, eventfds,
  clients' maps);
- a well-formed client is answered correctly (a fresh context's first IOAS
  is 1; bind, attach, map, device DMA both ways through the client's
  buffer).

Environment:

- ``IOMMUFS_FUZZ_SEED``: replay that seed (default: a new one, printed);
- ``IOMMUFS_FUZZ_SECONDS``: the fuzzing time (default 40; hours are fine);
- ``IOMMUFS_FUZZ_WORKERS``: client processes (default 3; with more than
  one, the first runs under the preload shim).

The seed, the number of calls per node kind and the errno mix are printed
(to the terminal, also under -q) and recorded as properties (junit XML).
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT, TESTS, abort_connection, client_env, start_server, stop_server

SECONDS = float(os.environ.get("IOMMUFS_FUZZ_SECONDS", "40"))
WORKERS = int(os.environ.get("IOMMUFS_FUZZ_WORKERS", "3"))
# A worker that has not finished this long after its budget is hung.
GRACE = 30.0
# Lines of a server log that only a defect produces.
BAD_LOG = ("Traceback", "AddressSanitizer", "LeakSanitizer", "runtime error:",
           "UndefinedBehaviorSanitizer", " ERROR ", " CRITICAL ")


def fuzz_seed():
    """The seed of this run: IOMMUFS_FUZZ_SEED, or a new random one."""
    return os.environ.get("IOMMUFS_FUZZ_SEED") or str(random.SystemRandom().getrandbits(32))


def server_fds(pid):
    """The fds the server process holds: {fd: what it is}."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def _per_client(pid, what):
    """Whether a server fd is one it holds for a client (a pidfd of a
    mapping's owner or an SVA bond, a fault group's eventfd, an eventfd
    taken from a client, a client's maps, a node of a mount) rather than
    one it opens once for itself when first needed (an epoll, its own
    mountinfo)."""
    if what in ("anon_inode:[pidfd]", "anon_inode:[eventfd]"):
        return True
    if what.startswith("/proc/") and what.endswith("/maps"):
        return what != f"/proc/{pid}/maps"
    return what.startswith("/tmp/iommufs-")


def _pid_of(pid, fd):
    # A pidfd's fdinfo names its process: which client's (or init's, for
    # an SVA bind of pid 1) reference the server kept.
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return f" (pid {line.split()[1]})"
    except OSError:
        pass
    return ""


def leftovers(mnt):
    """What the mount still holds for someone: a list of strings, empty when
    nothing is bound, attached, bonded, allocated or exported under fds/."""
    left = []
    for name in sorted(os.listdir(os.path.join(mnt, "devices"))):
        with open(os.path.join(mnt, "devices", name, "info")) as f:
            info = json.load(f)
        for key, empty in (("dev_id", None), ("attached", {}), ("sva_bonds", []),
                           ("pasids_allocated", [])):
            if info.get(key, empty) != empty:
                left.append(f"{name}: {key} = {info[key]!r}")
    fds = os.listdir(os.path.join(mnt, "fds"))
    if fds:
        left.append(f"fds/: {sorted(fds)}")
    return left


def wait_clean(mnt, pid, base_fds, timeout=15.0):
    """Wait until the mount holds nothing and the server no more fds than
    it did before (``base_fds``, from :func:`server_fds`; FUSE releases are
    asynchronous); returns what is left."""
    end = time.monotonic() + timeout
    while True:
        left = leftovers(mnt)
        now = server_fds(pid)
        new = sorted(f"{fd} -> {what}{_pid_of(pid, fd)}" for fd, what in now.items()
                     if base_fds.get(fd) != what and _per_client(pid, what))
        if new:
            left.append(f"server holds fds it took for clients: {', '.join(new)}")
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


def roundtrip(mnt):
    """A well-formed client's whole path: a fresh context, bind, attach,
    map, device DMA into and out of its own buffer, then a clean close."""
    from devfs.client import Buffer, DmaPort, Iommufd, VfioDevice

    iommufd = Iommufd(mnt)
    dev = VfioDevice(mnt, "0000:00:03.0")
    buf = Buffer(1 << 16)
    port = DmaPort(mnt, "0000:00:03.0")
    try:
        dev_id = dev.bind(iommufd)
        ioas = iommufd.ioas_alloc()
        assert ioas == 2 and dev_id == 1, (dev_id, ioas)     # IDs from 1 in a fresh context
        dev.attach(ioas)
        assert iommufd.ioas_map(ioas, buf.va, len(buf), iova=0x100000) == 0x100000
        port.write(0x100000 + 8, b"fuzzed, and still here")
        assert buf[8:30] == b"fuzzed, and still here"
        buf[0x2000:0x2004] = b"back"
        assert port.read(0x102000, 4) == b"back"
    finally:
        port.close()
        dev.sync_close()
        iommufd.sync_close()
        buf.close()


def last_call(status):
    """The call a worker was making, from its status file (fuzzkit.py)."""
    try:
        with open(status, "rb") as f:
            raw = f.read()
    except OSError:
        return "an unknown call"
    n = int.from_bytes(raw[:8], "little")
    return f"call {n}: " + raw[8:].split(b"\0")[0].decode(errors="replace")


def run_workers(mnt, seed, seconds, workers, tmp):
    """Run the fuzz workers to their end; returns (results, problems)."""
    from devfs.run import shim_path

    procs = []
    plain = client_env()
    # The clients' memory is what the server reads and writes: no ASan
    # runtime in them (scripts/sanitize.sh preloads it everywhere), whose
    # shadow covers much of the address space, and so not the sanitizer
    # build of cext either (it needs that runtime first). The server keeps
    # both.
    plain.pop("LD_PRELOAD", None)
    plain.pop("IOMMUFS_SANITIZE_DIR", None)
    # Worker 0 runs under the preload shim (after the sanitizer runtimes, if
    # any), as an unmodified program would: its ioctl() and close() go
    # through the shim's wrappers, bad pointers included.
    shimmed = client_env()
    shimmed["LD_PRELOAD"] = ":".join(p for p in (shimmed.get("LD_PRELOAD", "").replace(" ", ":"),
                                                 shim_path()) if p)
    shimmed["IOMMUFS_ROOT"] = mnt
    for i in range(workers):
        env = shimmed if i == 0 and workers > 1 else plain
        status = os.path.join(tmp, f"status-{i}")
        p = subprocess.Popen([sys.executable, os.path.join(TESTS, "fuzzkit.py"), mnt, seed, str(i),
                              str(seconds), status],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append((i, p, status))
    results, problems = [], []
    end = time.monotonic() + seconds + GRACE
    try:
        for i, p, status in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"worker {i} hung at {last_call(status)}")
                continue
            lines = [l for l in out.splitlines() if l.startswith("{")]
            if p.returncode not in (0, 3) or not lines:
                problems.append(f"worker {i} failed (rc {p.returncode}) at {last_call(status)}:\n"
                                f"{err[-3000:]}")
                continue
            res = json.loads(lines[-1])
            results.append(res)
            if res["fatal"]:
                problems.append(f"worker {i}: server gone at {res['fatal']}")
    finally:
        reap(mnt, [p for _, p, _ in procs])
    return results, problems


def reap(mnt, procs):
    """Kill the workers still running. One whose request the server read
    and never answers cannot die (FUSE waits for the answer uninterruptibly
    once the server has the request): then the connection is aborted, as
    nothing else would end that wait."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            abort_connection(mnt)
            p.wait(10)


def test_fuzz(record_property, capsys):
    """Seeded concurrent fuzzing of every node kind; the server must
    survive whole (see the module docstring)."""
    seed = fuzz_seed()
    replay = f"IOMMUFS_FUZZ_SEED={seed}"
    with capsys.disabled():
        print(f"\nfuzz: seed {seed} ({replay} replays it), {WORKERS} workers x {SECONDS:g} s",
              flush=True)
    record_property("fuzz_seed", seed)
    m = start_server()
    tmp = tempfile.mkdtemp(prefix="iommufs-fuzz-")
    try:
        base_fds = server_fds(m.pid)
        results, problems = run_workers(m.path, seed, SECONDS, WORKERS, tmp)
        alive = m.proc.poll() is None
        if os.environ.get("IOMMUFS_SANITIZE_DIR") and alive:
            # Under scripts/sanitize.sh the server must run the sanitizer build.
            with open(f"/proc/{m.pid}/maps") as f:
                maps = f.read()
            assert os.path.realpath(os.environ["IOMMUFS_SANITIZE_DIR"]) in maps and "libasan" in maps
        calls = sum(r["calls"] for r in results)
        by_kind, errnos, reached = {}, {}, {}
        for r in results:
            for total, part in ((by_kind, r["by_kind"]), (errnos, r["errnos"]), (reached, r["reached"])):
                for k, v in part.items():
                    total[k] = total.get(k, 0) + v
        reached = {k.split(":")[0]: v for k, v in reached.items()}
        summary = (f"fuzz: {calls} calls ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))}); "
                   f"results: {', '.join(f'{k} {v}' for k, v in sorted(errnos.items(), key=lambda kv: -kv[1]))}; "
                   f"state reached: {', '.join(f'{k} {v}' for k, v in sorted(reached.items()))}")
        with capsys.disabled():
            print(summary, flush=True)
        record_property("fuzz_calls", calls)
        record_property("fuzz_calls_by_kind", json.dumps(by_kind, sort_keys=True))
        assert not problems and alive, (
            f"{replay}: server {'alive' if alive else 'DEAD (rc %s)' % m.proc.returncode}\n"
            + "\n".join(problems) + "\n--- server log (tail) ---\n" + m.log_text()[-4000:])
        left = wait_clean(m.path, m.pid, base_fds)
        assert not left, f"{replay}: left after every fuzz client closed its fds:\n" + "\n".join(left)
        roundtrip(m.path)
        left = wait_clean(m.path, m.pid, base_fds)
        assert not left, f"{replay}: left after the well-formed client:\n" + "\n".join(left)
        assert m.proc.poll() is None, f"{replay}: server died after the fuzz"
        log = m.log_text()
        bad = [l for l in log.splitlines() if any(b in l for b in BAD_LOG)]
        assert not bad, f"{replay}: server log:\n" + log[-8000:]
        reports = os.environ.get("IOMMUFS_SANITIZE_REPORTS")
        if reports and os.path.isdir(reports):
            # scripts/sanitize.sh sends reports to files named <kind>.<pid>.
            mine = [f for f in os.listdir(reports) if f.endswith(f".{m.pid}")]
            assert not mine, f"{replay}: sanitizer reports of the server: {mine} in {reports}"
        assert calls > 0
    finally:
        stop_server(m)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
