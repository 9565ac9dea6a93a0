"""Checks of the sanitizer run (scripts/sanitize.sh, cext/sanitize.py);
skipped outside it.

The run's processes write ASan and UBSan reports to files under
IOMMUFS_SANITIZE_REPORTS rather than to stderr, where a server's log or a
client's captured output could hide them; the last test of the run fails if
any was written, so the run's own pytest summary counts it.
"""
import os

import pytest

SANITIZE_DIR = os.environ.get("IOMMUFS_SANITIZE_DIR")
REPORTS = os.environ.get("IOMMUFS_SANITIZE_REPORTS")

pytestmark = pytest.mark.skipif(not SANITIZE_DIR, reason="not a sanitizer run (scripts/sanitize.sh)")


def _maps(pid="self"):
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_the_sanitizer_build_is_loaded():
    """The C modules and the shim come from the sanitizer build, and the
    ASan runtime is in the process: the run tests what it says it tests."""
    import cext._native
    import devfs._fuse
    from devfs.run import shim_path

    root = os.path.realpath(SANITIZE_DIR)
    for path in (cext._native.__file__, devfs._fuse.__file__, shim_path()):
        assert os.path.realpath(path).startswith(root + os.sep), path
    assert "libasan.so" in _maps() and "libubsan.so" in _maps()


@pytest.mark.last
def test_no_sanitizer_report():
    """No process of the run wrote an ASan or UBSan report."""
    assert REPORTS, "IOMMUFS_SANITIZE_REPORTS is not set"
    found = sorted(os.listdir(REPORTS)) if os.path.isdir(REPORTS) else []
    text = ""
    for name in found:
        with open(os.path.join(REPORTS, name), errors="replace") as f:
            text += f"=== {name}\n{f.read()[:20000]}\n"
    assert not found, text
