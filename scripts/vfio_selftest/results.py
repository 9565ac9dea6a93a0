"""Summarize the VFIO selftest runs of scripts/vfio_selftest.sh into one file.

Each binary ran once per target function (scripts/vfio_selftest/runner.sh
wrote LOGDIR/BDF.log and LOGDIR/BDF.status). The TAP of each log is parsed
with scripts/kselftest/tap.py; instances are named ``BDF/INSTANCE`` (e.g.
``01f5:00:03.0/vfio_pci_device_test.reset``). A run with no TAP plan (the
binary left in main: no driver for the function, no device) is one instance
``BDF/main``: SKIP when it exited 4 (KSFT_SKIP), FAIL otherwise; a run that
died after its plan adds ``BDF/main`` FAIL too, since its missing instances
have no names.

Command line::

    python3 results.py --results FILE [--meta KEY=VALUE ...] \\
        BINARY=LOGDIR[:EXIT[:SECONDS]] ...

prints counts per binary and per IOMMU mode and writes FILE as JSON::

    {"meta": {...},
     "binaries": {"vfio_pci_device_test": {
         "exit": 0, "seconds": 3.1, "counts": {"PASS": 25, "FAIL": 0, "SKIP": 0},
         "modes": {"iommufd": {"PASS": 25, "FAIL": 0, "SKIP": 0}},
         "results": {"01f5:00:03.0/vfio_pci_device_test.reset": "PASS", ...},
         "diagnostics": {...}, "runs": {"01f5:00:03.0": {"exit": 0, "plan": 5}},
         "server_errors": []}}}

Exit status: 0 when nothing failed, 1 when an instance failed, 3 when a
binary produced no run at all.
"""
import argparse
import importlib.util
import json
import os
import re
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "iommufs_kselftest_tap", os.path.join(_HERE, "..", "kselftest", "tap.py"))
tap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tap)

KSFT_SKIP = 4
#: The IOMMU modes of tools/testing/selftests/vfio/lib/iommu.c, longest first
#: so that "iommufd_compat_type1v2" is not read as "iommufd".
MODES = ("iommufd_compat_type1v2", "iommufd_compat_type1", "vfio_type1v2_iommu",
         "vfio_type1_iommu", "iommufd")


def mode_of(instance):
    """The IOMMU mode an instance ran in: the variant that names one, else
    "iommufd" (the library's default_iommu_mode, the only one the binaries
    without mode variants use)."""
    for part in re.split(r"[./]", instance):
        for mode in MODES:
            if part == mode or part.startswith(mode + "_"):
                return mode
    return "iommufd"


def last_line(text):
    """The last non-empty line of a log: what a binary said before leaving main."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_RUN = re.compile(r"^#\s+RUN\s+(\S+) \.\.\.\s*$")
_ASSERT = re.compile(r"^(\S+:\d+): Assertion Failure\s*$")


def assertion(lines):
    """The library's VFIO_ASSERT report in ``lines`` (it prints outside TAP,
    without "# "), in one line: "FILE:LINE: EXPRESSION; MESSAGE", or None."""
    for i, line in enumerate(lines):
        m = _ASSERT.match(line.strip())
        if not m:
            continue
        expr, msg = "", ""
        for follow in lines[i + 1:]:
            f = follow.strip()
            if f.startswith("#") or _ASSERT.match(f):
                break
            if f.startswith("Expression:"):
                expr = f[len("Expression:"):].strip()
            elif f and not f.startswith(("Observed:", "[errno:")):
                msg = f
        return f"{m.group(1)}: {expr}" + (f"; {msg}" if msg else "")
    return None


def assertions(text):
    """instance (or None before any RUN line) -> its first VFIO_ASSERT report."""
    blocks, current = {}, None
    for line in text.splitlines():
        m = _RUN.match(line)
        if m:
            current = m.group(1)
            continue
        blocks.setdefault(current, []).append(line)
    found = {k: assertion(v) for k, v in blocks.items()}
    return {k: v for k, v in found.items() if v}


def parse_run(bdf, text, exit_code):
    """One binary's log on one function: ``(plan, results, diagnostics)`` with
    instances prefixed by ``BDF/`` and the ``BDF/main`` rule applied. A
    failed instance's diagnostic is its VFIO_ASSERT report when it has one
    (more telling than the harness's "Test failed")."""
    plan, results, diags = tap.parse(text)
    reports = assertions(text)
    for inst, res in results.items():
        if res == "FAIL" and inst in reports:
            diags[inst] = reports[inst]
    out = {f"{bdf}/{k}": v for k, v in results.items()}
    dout = {f"{bdf}/{k}": v for k, v in diags.items()}
    if plan is None:
        out[f"{bdf}/main"] = "SKIP" if exit_code == KSFT_SKIP else "FAIL"
        dout[f"{bdf}/main"] = f"exit {exit_code}: {reports.get(None) or last_line(text)}"
    elif plan != len(results):
        out[f"{bdf}/main"] = "FAIL"
        dout[f"{bdf}/main"] = f"planned {plan}, reported {len(results)}, exit {exit_code}: {last_line(text)}"
    return plan, out, dout


def summarize(logdir, server_log=None):
    """Every run in ``logdir``: the binary's entry of the result file (without
    exit and seconds)."""
    results, diags, runs = {}, {}, {}
    for name in sorted(os.listdir(logdir)):
        if not name.endswith(".log"):
            continue
        bdf = name[:-4]
        with open(os.path.join(logdir, name), errors="replace") as f:
            text = f.read()
        exit_code, seconds = None, None
        status = os.path.join(logdir, bdf + ".status")
        if os.path.exists(status):
            with open(status) as f:
                fields = f.read().split()
            exit_code, seconds = int(fields[0]), int(fields[1]) / 1000
        plan, r, d = parse_run(bdf, text, exit_code)
        results.update(r)
        diags.update(d)
        runs[bdf] = {"exit": exit_code, "plan": plan, "seconds": seconds}
    modes = {}
    for inst, res in results.items():
        modes.setdefault(mode_of(inst), {r: 0 for r in tap.RESULTS})[res] += 1
    errors = []
    if server_log and os.path.exists(server_log):
        with open(server_log, errors="replace") as f:
            errors = tap.server_errors(f.read())
    return {"counts": tap.counts(results), "modes": modes, "results": results,
            "diagnostics": diags, "runs": runs, "server_errors": errors}


def main(argv=None):
    """Command line: summarize the log directories, print counts, write the file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("binaries", nargs="+", metavar="BINARY=LOGDIR[:EXIT[:SECONDS]]")
    args = ap.parse_args(argv)
    out = {"meta": dict(m.partition("=")[::2] for m in args.meta), "binaries": {}}
    rc = 0
    for spec in args.binaries:
        name, _, rest = spec.partition("=")
        parts = rest.split(":")
        logdir = parts[0]
        b = summarize(logdir, logdir + ".server.log")
        b["exit"] = int(parts[1]) if len(parts) > 1 and parts[1] else None
        b["seconds"] = float(parts[2]) if len(parts) > 2 and parts[2] else None
        out["binaries"][name] = b
        c = b["counts"]
        took = f" in {b['seconds']:.1f}s" if b["seconds"] is not None else ""
        print(f"{name}: {len(b['results'])} instances on {len(b['runs'])} functions: "
              f"pass {c['PASS']}, fail {c['FAIL']}, skip {c['SKIP']}{took}")
        for mode, mc in sorted(b["modes"].items()):
            print(f"  {mode}: pass {mc['PASS']}, fail {mc['FAIL']}, skip {mc['SKIP']}")
        if b["server_errors"]:
            print(f"{name}: the iommufs server logged {len(b['server_errors'])} errors, "
                  f"the first: {b['server_errors'][0]}")
        if not b["runs"]:
            rc = 3
        elif c["FAIL"] and rc == 0:
            rc = 1
    with open(args.results, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
