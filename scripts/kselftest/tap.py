"""Parse the TAP output of kselftest harness binaries and write a result file.

The harness prints, per instance (FIXTURE.VARIANT.TEST or FIXTURE.TEST)::

    #  RUN           iommufd.cmd_length ...
    # iommufd.c:124:cmd_length:Expected 22 (22) == errno (25)
    #          FAIL  iommufd.cmd_length
    not ok 3 iommufd.cmd_length
    ok 231 iommufd_viommu.no_viommu.hw_queue # SKIP Skipping test for variant ...

The logs parsed here hold stdout and stderr merged (the harness line-buffers
stdout and flushes before each fork, so a test's diagnostics land between its
RUN line and its result line).

Command line (used by scripts/kselftest.sh)::

    python3 tap.py --results FILE [--meta KEY=VALUE ...] \
        [--server-log BINARY=FILE ...] BINARY=LOG[:EXIT[:SECONDS]] ...

prints pass/fail/skip counts per binary and writes FILE as JSON::

    {"meta": {...},
     "binaries": {"iommufd": {"plan": 246, "exit": 1, "seconds": 15.2,
                              "counts": {"PASS": 55, "FAIL": 186, "SKIP": 5},
                              "results": {"iommufd.simple_close": "PASS", ...},
                              "diagnostics": {"iommufd.cmd_length": "...", ...},
                              "server_errors": []}}}

``server_errors`` holds the error lines (ERROR, CRITICAL, tracebacks) of the
iommufs server's log during that binary's run: the emulator must answer every
request, right or wrong, without an internal error.
"""
import argparse
import json
import os
import re
import sys

RESULTS = ("PASS", "FAIL", "SKIP")

_RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(.*)$")
_PLAN = re.compile(r"^1\.\.(\d+)\s*$")
_RUN = re.compile(r"^#\s+RUN\s+(\S+) \.\.\.\s*$")
# The harness's own framing lines, not a test's diagnostics.
_FRAMING = re.compile(r"^#\s+(OK|FAIL|SKIP|XFAIL|XPASS|RUN)\s")


def parse(text):
    """Parse one binary's TAP log.

    Returns ``(plan, results, diagnostics)``: the planned instance count (None
    if the log has no plan line), an ordered dict instance -> "PASS" | "FAIL" |
    "SKIP", and instance -> its first diagnostic line (the first assertion
    message a failing test printed, or a skip's reason).
    """
    plan = None
    results = {}
    diagnostics = {}
    current = None
    for line in text.splitlines():
        m = _PLAN.match(line)
        if m and plan is None:
            plan = int(m.group(1))
            continue
        m = _RUN.match(line)
        if m:
            current = m.group(1)
            continue
        m = _RESULT.match(line)
        if m:
            ok, name, rest = m.group(1), m.group(3), m.group(4)
            directive = rest.strip()
            if re.match(r"#\s*SKIP\b", directive, re.IGNORECASE):
                results[name] = "SKIP"
                reason = re.sub(r"^#\s*SKIP\s*", "", directive, flags=re.IGNORECASE)
                if reason and name not in diagnostics:
                    diagnostics[name] = reason
            else:
                results[name] = "PASS" if ok == "ok" else "FAIL"
            current = None
            continue
        if current and line.startswith("# ") and not _FRAMING.match(line):
            diagnostics.setdefault(current, line[2:].strip())
    return plan, results, diagnostics


_SERVER_ERROR = re.compile(r"^iommufs\[\d+\] (ERROR|CRITICAL) |^Traceback ")


def server_errors(text):
    """The lines of an iommufs server log that report an internal error."""
    return [line for line in text.splitlines() if _SERVER_ERROR.match(line)]


def counts(results):
    """Count a results dict by outcome: ``{"PASS": n, "FAIL": n, "SKIP": n}``."""
    c = {r: 0 for r in RESULTS}
    for r in results.values():
        c[r] += 1
    return c


def _binary_arg(spec):
    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    log = parts[0]
    exit_code = int(parts[1]) if len(parts) > 1 and parts[1] != "" else None
    seconds = float(parts[2]) if len(parts) > 2 and parts[2] != "" else None
    return name, log, exit_code, seconds


def main(argv=None):
    """Command line: summarize logs, print counts, write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="JSON file to write")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server-log", action="append", default=[], metavar="BINARY=FILE")
    ap.add_argument("binaries", nargs="+", metavar="BINARY=LOG[:EXIT[:SECONDS]]")
    args = ap.parse_args(argv)
    server_logs = dict(s.partition("=")[::2] for s in args.server_log)

    out = {"meta": dict(m.partition("=")[::2] for m in args.meta), "binaries": {}}
    incomplete = False
    for spec in args.binaries:
        name, log, exit_code, seconds = _binary_arg(spec)
        with open(log, errors="replace") as f:
            plan, results, diags = parse(f.read())
        c = counts(results)
        errors = []
        # With --mount the server is not ours and writes no log here.
        if name in server_logs and os.path.exists(server_logs[name]):
            with open(server_logs[name], errors="replace") as f:
                errors = server_errors(f.read())
        out["binaries"][name] = {
            "plan": plan, "exit": exit_code, "seconds": seconds, "counts": c,
            "results": results, "diagnostics": diags, "server_errors": errors,
        }
        # A binary that died mid-run reports fewer instances than it planned;
        # say so here, since the counts alone would look like a shorter suite.
        missing = "" if plan == len(results) else f"  (planned {plan}, reported {len(results)})"
        incomplete |= bool(missing)
        took = f" in {seconds:.1f}s" if seconds is not None else ""
        print(f"{name}: {len(results)} instances: pass {c['PASS']}, fail {c['FAIL']}, "
              f"skip {c['SKIP']}{took}{missing}")
        if errors:
            print(f"{name}: the iommufs server logged {len(errors)} errors, "
                  f"the first: {errors[0]}")
    with open(args.results, "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")
    return 3 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
