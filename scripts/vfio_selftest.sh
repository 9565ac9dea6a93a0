#!/usr/bin/env bash
# Build the kernel's own VFIO selftests from Debian's linux-source package and
# run them, unmodified, against the emulated PCI functions (issue 13, item 4).
#
#   bash scripts/vfio_selftest.sh [--build-only] [--results FILE]
#                                 [--hugepages N] [--topology FILE]
#                                 [--only BINARY] [-- HARNESS ARGS...]
#
#   --build-only    fetch and build, do not run
#   --results FILE  the JSON result file (default $CACHE/vfio/results.json):
#                   per binary, "BDF/instance" -> PASS | FAIL | SKIP, counts
#   --hugepages N   2 MiB hugetlb pages added to the pool for the run (default
#                   16; 0 leaves the pools alone); one 1 GiB page is asked for
#                   too; both are taken back after
#   --topology FILE the topology of the mount made for each binary (default:
#                   the built-in one)
#   --only BINARY   run only this one of the four binaries
#   -- ARGS         passed to each binary (the harness's -f/-v/-t/-r filters)
#
# What runs where (every binary under its own `iommufs run`, on the emulated
# functions the run's /sys/bus/pci/devices lists, domain 01f5):
#   vfio_pci_device_test     every function (iommufd mode: the test has no other)
#   vfio_iommufd_setup_test  the first function (iommufd only, by its nature)
#   vfio_dma_mapping_test    the first function, every IOMMU mode (its variants)
#   vfio_pci_driver_test     every function, every IOMMU mode; a function no
#                            selftest driver (ioat, dsa, ...) matches skips the
#                            whole binary, recorded as "BDF/main" SKIP
# A binary that reports no TAP plan (it exited in main) is recorded as one
# instance "BDF/main": SKIP on exit 4 (KSFT_SKIP), FAIL otherwise.
#
# The Debian package comes from scripts/kselftest.sh's cache: this script asks
# it (--build-only) to fetch the package, then extracts what the VFIO
# selftests need from the same .deb. Environment: IOMMUFS_KSELFTEST_CACHE,
# IOMMUFS_KSELFTEST_PACKAGE and IOMMUFS_KSELFTEST_MIRROR as for kselftest.sh.
#
# Exit status: 0 when no instance failed, 1 when some failed, 2 on a usage
# error, 3 when a binary ran on no function at all, 4 when fetching or
# building failed. A binary that dies mid-run shows as a "BDF/main" FAIL.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/vfio_selftest
CACHE=${IOMMUFS_KSELFTEST_CACHE:-/var/cache/iommufs-kselftest}
BINARIES=(vfio_pci_device_test vfio_iommufd_setup_test vfio_dma_mapping_test vfio_pci_driver_test)
# uAPI headers newer than the host's linux-libc-dev that the library reaches;
# <linux/pci_regs.h>, <linux/mman.h> and the like stay the host's.
UAPI=(vfio iommufd idxd types ioctl stddef posix_types)

build_only=0 results="" hugepages=16 topology="" only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) build_only=1 ;;
        --results) results=$2; shift ;;
        --hugepages) hugepages=$2; shift ;;
        --topology) topology=$2; shift ;;
        --only) only=$2; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vfio_selftest.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
harness_args=("$@")
if [ -n "$only" ]; then
    case " ${BINARIES[*]} " in *" $only "*) BINARIES=("$only") ;;
        *) echo "vfio_selftest.sh: --only takes one of: ${BINARIES[*]}" >&2; exit 2 ;; esac
fi

die() { echo "vfio_selftest.sh: $*" >&2; exit 4; }
say() { echo "vfio_selftest.sh: $*" >&2; }
ms() { local d=$(( ($2 - $1) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

[ "$(id -u)" = 0 ] || die "run as root (apt, the hugetlb pools and the mount need it)"
command -v gcc >/dev/null || die "gcc missing"

# --- the package, through kselftest.sh ----------------------------------------

# kselftest.sh takes the cache lock itself, so it runs before we take it.
package_deb() {
    local pkg ver deb
    [ -f "$CACHE/build.stamp" ] && read -r pkg ver _ < "$CACHE/build.stamp" || true
    deb=$CACHE/apt/debs/${pkg:-none}_${ver//:/%3a}_all.deb
    [ -f "$deb" ] && echo "$pkg $ver $deb"
}
ensure_package() {
    local got
    bash "$ROOT/scripts/kselftest.sh" --build-only >&2 || die "scripts/kselftest.sh --build-only failed"
    got=$(package_deb || true)
    if [ -z "$got" ]; then
        # A cached iommufd build whose .deb is gone: make it fetch again.
        bash "$ROOT/scripts/kselftest.sh" --build-only --refresh >&2 || die "scripts/kselftest.sh --refresh failed"
        got=$(package_deb || true)
    fi
    [ -n "$got" ] || die "no linux-source .deb in $CACHE/apt/debs after kselftest.sh"
    echo "$got"
}

host_packages() {
    [ -e /usr/include/uuid/uuid.h ] && command -v unifdef >/dev/null && return
    say "installing uuid-dev unifdef"
    export DEBIAN_FRONTEND=noninteractive
    local install=(apt-get install -y -qq -o DPkg::Lock::Timeout=300)
    "${install[@]}" uuid-dev unifdef >/dev/null 2>&1 \
        || { apt-get update -qq && "${install[@]}" uuid-dev unifdef >/dev/null; } \
        || die "cannot install uuid-dev unifdef"
}

# --- extract and build ----------------------------------------------------------

# Extract MEMBERS... of the package's tarball into $src (stripping the top
# directory); the .deb holds the tarball, streamed, never kept.
extract() {
    local deb=$1 pkg=$2; shift 2
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$pkg.tar.xz" \
        | tar -xJ -C "$src" --strip-components=1 --wildcards "$@"
}

RECIPE=$(sed -n -e '/^UAPI=/p' -e '/^extract()/,/^}/p' -e '/^fetch_and_build()/,/^}/p' "$0" | sha256sum | cut -c1-16)

fetch_and_build() {
    local pkg=$1 ver=$2 deb=$3 top=$1 base inc bin obj links missing t
    base=$CACHE/vfio/$pkg/$ver
    # $src is global: extract() reads it.
    src=$base/src inc=$base/include bin=$base/bin obj=$base/obj
    rm -rf "$base"
    mkdir -p "$src" "$inc/linux" "$bin" "$obj"
    say "extracting the VFIO selftests, tools/include and uAPI headers from $(basename "$deb")"
    local members=(
        "$top/tools/testing/selftests/vfio"
        "$top/tools/testing/selftests/kselftest_harness.h"
        "$top/tools/testing/selftests/kselftest.h"
        "$top/tools/include"
        "$top/tools/arch/x86/include"
        "$top/scripts/headers_install.sh"
    )
    for h in "${UAPI[@]}"; do members+=("$top/include/uapi/linux/$h.h"); done
    extract "$deb" "$pkg" "${members[@]}" || die "extracting from $(basename "$deb") failed"
    # The driver headers (drivers/dma/ioat/hw.h, ...) and tools/include's
    # pci_ids.h are symlinks into the kernel tree: a second pass fetches
    # what they name.
    missing=()
    while IFS= read -r links; do
        t=$(realpath -m "$links")
        [ -e "$t" ] || missing+=("$top/${t#"$src"/}")
    done < <(find "$src/tools" -type l)
    if [ ${#missing[@]} -gt 0 ]; then
        say "extracting ${#missing[@]} headers the symlinks name"
        extract "$deb" "$pkg" "${missing[@]}" || die "extracting symlink targets failed"
    fi

    ln -sf "$(command -v unifdef)" "$src/scripts/unifdef"
    for h in "${UAPI[@]}"; do
        (cd "$src" && sh scripts/headers_install.sh "include/uapi/linux/$h.h" "$inc/linux/$h.h") \
            || die "headers_install.sh of linux/$h.h failed"
    done

    # The flags of the vfio Makefile, lib.mk and lib/libvfio.mk for gcc:
    # KHDR_INCLUDES as -isystem of the sanitized headers, -D_GNU_SOURCE=, -I
    # of the selftests directory, of lib/include and of tools/include,
    # -Wall -Werror, -pthread, -luuid. The library sources are those
    # libvfio.mk names for x86_64, read from it.
    local vfio=$src/tools/testing/selftests/vfio lib=() f
    local cflags=(-isystem "$inc" -D_GNU_SOURCE= -I.. -Ilib/include -I../../../include -Wall -Werror)
    mapfile -t lib < <(sed -n 's/^LIBVFIO_C[[:space:]]*+\{0,1\}:\{0,1\}=[[:space:]]*//p' "$vfio/lib/libvfio.mk")
    [ ${#lib[@]} -ge 6 ] || die "lib/libvfio.mk changed: no LIBVFIO_C list"
    for f in "${lib[@]}"; do
        say "building lib/$f"
        mkdir -p "$obj/$(dirname "$f")"
        # In the source directory, as make does: __FILE__ in the assertions is
        # then "lib/vfio_pci_device.c", not a path into the cache.
        (cd "$vfio" && gcc "${cflags[@]}" -c "lib/$f" -o "$obj/${f%.c}.o") || die "building lib/$f failed"
    done
    local objs=()
    for f in "${lib[@]}"; do objs+=("$obj/${f%.c}.o"); done
    for b in "${BINARIES_ALL[@]}"; do
        say "building $b"
        (cd "$vfio" && gcc "${cflags[@]}" -pthread "$b.c" "${objs[@]}" -luuid -o "$bin/$b") \
            || die "building $b failed"
    done
    echo "$pkg $ver $RECIPE" > "$base/../build.stamp"
}

BINARIES_ALL=(vfio_pci_device_test vfio_iommufd_setup_test vfio_dma_mapping_test vfio_pci_driver_test)
host_packages
got=$(ensure_package)
read -r pkg ver deb <<<"$got"
mkdir -p "$CACHE/vfio"
exec 9>"$CACHE/lock"
flock 9
stamp=$CACHE/vfio/$pkg/build.stamp
bin=$CACHE/vfio/$pkg/$ver/bin
cached=1
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkg $ver $RECIPE" ] || cached=0
for b in "${BINARIES_ALL[@]}"; do [ -x "$bin/$b" ] || cached=0; done
if [ "$cached" = 1 ]; then
    say "using the cached build of $pkg $ver"
else
    fetch_and_build "$pkg" "$ver" "$deb"
fi
say "$pkg $ver: ${BINARIES[*]} in $bin"
[ "$build_only" = 1 ] && exit 0

# --- run ----------------------------------------------------------------------

IOMMUFS=$ROOT/.venv/bin/iommufs
[ -x "$IOMMUFS" ] || die "$IOMMUFS missing: run bash scripts/setup.sh install"

POOL2M=/proc/sys/vm/nr_hugepages
POOL1G=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
added2m=0 added1g=0
# Add to a pool and take back what was added, so that another user of
# hugetlb pages on the machine keeps its share.
grow() {
    local pool=$1 n=$2 before
    [ -w "$pool" ] && [ "$n" -gt 0 ] || { echo 0; return; }
    before=$(cat "$pool")
    echo $((before + n)) 2>/dev/null > "$pool" || true
    echo $(( $(cat "$pool") - before ))
}
shrink() {
    local pool=$1 n=$2 now
    [ "$n" -gt 0 ] || return 0
    now=$(cat "$pool")
    echo $((now > n ? now - n : 0)) > "$pool" || say "could not shrink $pool back by $n"
}
give_back() { shrink "$POOL2M" "$added2m"; shrink "$POOL1G" "$added1g"; }
trap give_back EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$hugepages" -gt 0 ]; then
    added2m=$(grow "$POOL2M" "$hugepages")
    added1g=$(grow "$POOL1G" 1)
    [ "$added2m" -ge "$hugepages" ] || say "WARNING: asked for $hugepages 2 MiB pages, got $added2m"
    [ "$added1g" -ge 1 ] || say "WARNING: no 1 GiB hugetlb page: the hugetlb_1gb variants skip"
fi

results=${results:-$CACHE/vfio/results.json}
logs=$CACHE/vfio/logs
rm -rf "$logs"
mkdir -p "$logs"
run_args=()
[ -n "$topology" ] && run_args+=(--topology "$topology")
specs=()
for b in "${BINARIES[@]}"; do
    say "running $b under iommufs run"
    mkdir -p "$logs/$b"
    t0=$(date +%s%N)
    set +e
    # The runner lists the run's emulated functions and runs the binary on
    # the ones it is meant for; the timeout only guards CI against a hang.
    timeout -k 10 900 "$IOMMUFS" run "${run_args[@]}" --log "$logs/$b.server.log" \
        -- bash "$HERE/runner.sh" "$bin/$b" "$logs/$b" "${harness_args[@]}" \
        >"$logs/$b.runner.log" 2>&1 9>&-
    rc=$?
    set -e
    t1=$(date +%s%N)
    [ "$rc" = 0 ] || say "$b: iommufs run exited $rc (see $logs/$b.runner.log)"
    specs+=("$b=$logs/$b:$rc:$(ms "$t0" "$t1")")
done

set +e
python3 "$HERE/results.py" --results "$results" \
    --meta package="$pkg" --meta version="$ver" \
    --meta hugepages_2m_added="$added2m" --meta hugepages_1g_added="$added1g" \
    --meta harness_args="${harness_args[*]}" "${specs[@]}"
rc=$?
set -e
say "results in $results, logs in $logs"
exit "$rc"
