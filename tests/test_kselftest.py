"""The kernel's own iommufd selftests, unmodified, against iommufs (issue 11).

scripts/kselftest.sh fetches Debian's linux-source-7.3, builds ``iommufd`` and
``iommufd_fail_nth`` and runs them under ``iommufs run``; these tests hold
every instance to its expected result: PASS, except the instances listed in
tests/kselftest_expected.txt with theirs. The match is exact both ways, so a
regression fails, and so does an instance on the list that starts passing
(the list must then shrink).

Set IOMMUFS_NO_KSELFTEST=1 to skip them (the only way: a machine that cannot
download the package fails them, loudly).
"""
import importlib.util
import json
import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "kselftest.sh")
EXPECTED = os.path.join(ROOT, "tests", "kselftest_expected.txt")
BINARIES = ("iommufd", "iommufd_fail_nth")

# Loaded by path under its own name: scripts/ is not a package, and "tap" is
# too generic a top-level name to put on sys.path.
_spec = importlib.util.spec_from_file_location(
    "iommufs_kselftest_tap", os.path.join(ROOT, "scripts", "kselftest", "tap.py"))
tap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tap)

disabled = pytest.mark.skipif(
    os.environ.get("IOMMUFS_NO_KSELFTEST") == "1",
    reason="IOMMUFS_NO_KSELFTEST=1",
)


def load_expected(path=EXPECTED):
    """Read the expected-results list.

    Returns ``{(binary, instance): (result, reason)}`` for the listed
    instances; every other instance is expected to PASS. Raises ValueError on
    a malformed line, an instance listed twice, or an instance before any
    ``[RESULT] reason`` group line.
    """
    expected = {}
    group = None
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if line.startswith("["):
                result, _, reason = line[1:].partition("]")
                reason = reason.strip()
                if result not in ("FAIL", "SKIP") or not reason:
                    raise ValueError(f"{path}:{lineno}: want '[FAIL|SKIP] reason': {raw!r}")
                group = (result, reason)
                continue
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2 or group is None:
                raise ValueError(f"{path}:{lineno}: want 'BINARY INSTANCE' after a group: {raw!r}")
            key = (fields[0], fields[1])
            if key in expected:
                raise ValueError(f"{path}:{lineno}: {key[0]} {key[1]} listed twice")
            expected[key] = group
    return expected


def compare(results, expected):
    """Match a run's results against the expected list.

    ``results`` is the result file's ``binaries`` mapping; ``expected`` is
    what :func:`load_expected` returns. Returns a dict of problem lists:
    ``regressed`` (expected PASS, got something else), ``improved`` (listed
    as FAIL or SKIP, now PASS), ``changed`` (listed, got the other non-PASS
    result), ``stale`` (listed, but no such instance ran). Each entry is
    ``(binary, instance, expected, got, detail)``.
    """
    problems = {"regressed": [], "improved": [], "changed": [], "stale": []}
    seen = set()
    for binary, b in results.items():
        for instance, got in b["results"].items():
            key = (binary, instance)
            seen.add(key)
            want, reason = expected.get(key, ("PASS", None))
            if got == want:
                continue
            # What the run said about it explains a new failure; the listed
            # reason explains what the instance was waiting for.
            detail = b.get("diagnostics", {}).get(instance, "")
            if want == "PASS":
                problems["regressed"].append((binary, instance, want, got, detail))
            elif got == "PASS":
                problems["improved"].append((binary, instance, want, got, reason))
            else:
                problems["changed"].append((binary, instance, want, got, detail))
    for key, (want, reason) in expected.items():
        if key not in seen and key[0] in results:
            problems["stale"].append((key[0], key[1], want, None, reason))
    return problems


def report(problems, listed="tests/kselftest_expected.txt"):
    """Human-readable text of :func:`compare`'s problems ('' when none);
    ``listed``: the expected-results file the text tells to edit."""
    heads = {
        "regressed": "expected PASS, did not pass (a regression):",
        "improved": f"listed in {listed} but now PASS: "
                    "remove them from the list (it only shrinks):",
        "changed": "listed with one result, got another:",
        "stale": f"listed in {listed} but not run "
                 "(renamed or removed upstream?): remove them:",
    }
    out = []
    for kind, head in heads.items():
        if problems[kind]:
            out.append(f"{len(problems[kind])} {head}")
            for binary, instance, want, got, detail in problems[kind]:
                out.append(f"  {binary} {instance}: want {want}, got {got}  ({detail})")
    return "\n".join(out)


# --- the parsers, without the download ------------------------------------------

TAP_SAMPLE = """\
TAP version 13
1..3
# Starting 3 tests from 1 test cases.
#  RUN           f.v.a ...
#            OK  f.v.a
ok 1 f.v.a
#  RUN           f.v.b ...
# iommufd.c:12:b:Expected 0 (0) == x (-1)
# iommufd.c:13:b:Expected 1 (1) == y (0)
# b: Test terminated by assertion
#          FAIL  f.v.b
not ok 2 f.v.b
#  RUN           f.v.c ...
#      SKIP      no such thing
#            OK  f.v.c
ok 3 f.v.c # SKIP no such thing
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
"""


def test_tap_parse():
    plan, results, diags = tap.parse(TAP_SAMPLE)
    assert plan == 3
    assert results == {"f.v.a": "PASS", "f.v.b": "FAIL", "f.v.c": "SKIP"}
    assert diags == {"f.v.b": "iommufd.c:12:b:Expected 0 (0) == x (-1)", "f.v.c": "no such thing"}
    assert tap.counts(results) == {"PASS": 1, "FAIL": 1, "SKIP": 1}
    log = ("iommufs[7] INFO iommufs mounted at /tmp/x\n"
           "iommufs[7] ERROR internal error serving a request\nTraceback (most recent call last):\n")
    assert len(tap.server_errors(log)) == 2


def test_expected_list_parses_and_compare_is_exact(tmp_path):
    expected = load_expected()
    assert all(b in BINARIES for b, _ in expected)
    p = tmp_path / "e.txt"
    p.write_text("# c\n[FAIL] cause one\nx f.v.b  # note\n[SKIP] cause two\nx f.v.c\nx f.v.gone\n")
    exp = load_expected(str(p))
    assert exp[("x", "f.v.b")] == ("FAIL", "cause one")
    run = {"x": {"results": {"f.v.a": "FAIL", "f.v.b": "PASS", "f.v.c": "FAIL"}, "diagnostics": {}}}
    problems = compare(run, exp)
    assert [e[1] for e in problems["regressed"]] == ["f.v.a"]
    assert [e[1] for e in problems["improved"]] == ["f.v.b"]
    assert [e[1] for e in problems["changed"]] == ["f.v.c"]
    assert [e[1] for e in problems["stale"]] == ["f.v.gone"]
    p.write_text("x f.v.b\n")
    with pytest.raises(ValueError):
        load_expected(str(p))


# --- the real run -----------------------------------------------------------------


def run_script(script, results):
    """Run a selftest script (``--results results``) once; returns (its
    result file's content, its output). Exit 0 is all passed, 1 some
    failed; anything else means no full run (no download, no build, a
    binary that died): that is the calling test's failure."""
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", script, "--results", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800,
    )
    took = time.monotonic() - t0
    assert proc.returncode in (0, 1), (
        f"{os.path.relpath(script, ROOT)} exited {proc.returncode} after {took:.0f}s "
        f"(set IOMMUFS_NO_KSELFTEST=1 to skip deliberately):\n{proc.stdout[-6000:]}"
    )
    with open(results) as f:
        return json.load(f), proc.stdout


def server_errors(data):
    """{binary: the iommufs server's internal errors} of a result file."""
    return {name: b["server_errors"] for name, b in data["binaries"].items() if b["server_errors"]}


@pytest.fixture(scope="module")
def kselftest_run(tmp_path_factory):
    """Run scripts/kselftest.sh once: (its result file's content, its output)."""
    return run_script(SCRIPT, tmp_path_factory.mktemp("kselftest") / "results.json")


@disabled
def test_every_instance_ran(kselftest_run):
    data, out = kselftest_run
    assert set(data["binaries"]) == set(BINARIES), out
    for name, b in data["binaries"].items():
        assert b["plan"] and b["plan"] == len(b["results"]), (
            f"{name}: planned {b['plan']} instances, reported {len(b['results'])}\n{out}")


@disabled
def test_no_server_error(kselftest_run):
    errors = server_errors(kselftest_run[0])
    assert not errors, f"the iommufs server logged internal errors: {errors}"


@disabled
def test_every_instance_as_expected(kselftest_run):
    data, out = kselftest_run
    problems = compare(data["binaries"], load_expected())
    text = report(problems)
    summary = "\n".join(line for line in out.splitlines() if "instances:" in line)
    assert not text, (
        f"{data['meta'].get('package')} {data['meta'].get('version')}, "
        f"hugetlb pages added: {data['meta'].get('hugepages_added')}\n{summary}\n{text}")
