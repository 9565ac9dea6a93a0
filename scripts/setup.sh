#!/usr/bin/env bash
# Set up iommufs on a Debian machine (as root) and then mount it or test it.
#
#   bash scripts/setup.sh mount [MOUNTPOINT] [--topology FILE]   # default /mnt/iommufs
#   bash scripts/setup.sh test [PYTEST ARGS...]   # the suite, then scripts/sanitize.sh
#   bash scripts/setup.sh install
#
# Installs what it needs itself: Debian's fuse3, libfuse3-dev, pkg-config, gcc
# and Python headers; a venv in .venv with the project and its test
# dependencies; the cffi extensions compiled in place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

need_apt() {
    command -v fusermount3 >/dev/null && pkg-config --exists fuse3 2>/dev/null \
        && command -v gcc >/dev/null && command -v taskset >/dev/null \
        && "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
        && "$PY" -c 'import venv, ensurepip' 2>/dev/null && return 1
    return 0
}

install() {
    if need_apt; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq fuse3 libfuse3-dev pkg-config gcc util-linux \
            python3 python3-venv python3-dev >/dev/null
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    # Compile the cffi extensions next to their packages, so the source tree
    # (which tests import) holds them whatever pip's editable mode did.
    "$VENV/bin/python" cext/build_native.py
    "$VENV/bin/python" devfs/build_fuse.py
    "$VENV/bin/python" cext/build_preload.py >/dev/null

    # The test guest (QEMU >= 10.0, a Debian kernel, busybox-static): tests
    # boot it, and scripts/demo_guest.py boots it beside a mount.
    bash "$ROOT/scripts/guest/install.sh"
}

# --- the kernel's iommufd selftests (tests/test_kselftest.py) ---------------
# scripts/kselftest.sh builds them with these Debian packages; it fetches the
# kernel source itself. IOMMUFS_NO_KSELFTEST=1 skips that test, and this.
kselftest_deps() {
    [ "${IOMMUFS_NO_KSELFTEST:-}" = 1 ] && return 0
    command -v unifdef >/dev/null && command -v xz >/dev/null \
        && [ -e /usr/include/sys/capability.h ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    local install=(apt-get install -y -qq -o DPkg::Lock::Timeout=300 unifdef libcap-dev xz-utils)
    "${install[@]}" >/dev/null 2>&1 || { apt-get update -qq && "${install[@]}" >/dev/null; }
}
# ----------------------------------------------------------------------------

cmd=${1:-}
shift || true
case "$cmd" in
    install)
        install ;;
    mount)
        install
        mnt=/mnt/iommufs
        if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then mnt=$1; shift; fi
        exec "$VENV/bin/iommufs" mount "$mnt" "$@" ;;
    test)
        install
        kselftest_deps
        cd "$ROOT"
        set +e
        "$VENV/bin/python" -m pytest -q "$@"
        rc=$?
        # Then the same tests on the ASan+UBSan build (scripts/sanitize.sh),
        # whose pytest summary closes the output; IOMMUFS_SANITIZE=0 skips it.
        src=0
        if [ "${IOMMUFS_SANITIZE:-1}" != 0 ]; then
            bash scripts/sanitize.sh "$@"
            src=$?
        fi
        set -e
        # pytest's 5 means "no tests ran": that is a failure here.
        [ $rc -ne 0 ] && exit $rc
        exit $src ;;
    *)
        echo "usage: bash scripts/setup.sh {mount [MOUNTPOINT] [--topology FILE]|test [ARGS]|install}" >&2
        exit 2 ;;
esac
