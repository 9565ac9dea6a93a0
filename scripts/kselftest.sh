#!/usr/bin/env bash
# Build the kernel's own iommufd selftests from Debian's linux-source package
# and run them, unmodified, against iommufs (issue 11, item 7).
#
#   bash scripts/kselftest.sh [--build-only] [--refresh] [--results FILE]
#                             [--hugepages N] [--mount MNT] [--only BINARY]
#                             [-- HARNESS ARGS...]
#
#   --build-only   fetch and build, do not run
#   --refresh      ask apt for a newer package even if a build is cached
#   --results FILE the JSON result file (default $CACHE/results.json):
#                  per binary, instance -> PASS | FAIL | SKIP, counts, run time
#   --hugepages N  hugetlb pages added to the pool for the run (default 128,
#                  2 MiB each; 0 leaves the pool alone); taken back after
#   --mount MNT    run against this iommufs mount instead of a fresh one
#   --only BINARY  run only iommufd or iommufd_fail_nth
#   -- ARGS        passed to each binary: the harness's own filters, e.g.
#                  -f FIXTURE, -v VARIANT, -t TEST, -r FIXTURE.VARIANT.TEST
#
# Environment:
#   IOMMUFS_KSELFTEST_CACHE    where everything is kept (default
#                              /var/cache/iommufs-kselftest; never the repo:
#                              nothing of the kernel's source is committed)
#   IOMMUFS_KSELFTEST_PACKAGE  the source package (default linux-source-7.3)
#   IOMMUFS_KSELFTEST_MIRROR   the Debian mirror URI (default: the machine's)
#
# Exit status: 0 when every instance ran and none failed, 1 when some failed,
# 2 on a usage error, 3 when a binary did not report every planned instance,
# 4 when fetching or building failed.
set -euo pipefail
# Command substitutions ($(fetch_and_build), $(pick_package)) must stop at the
# first failure too.
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/kselftest
CACHE=${IOMMUFS_KSELFTEST_CACHE:-/var/cache/iommufs-kselftest}
PACKAGE=${IOMMUFS_KSELFTEST_PACKAGE:-linux-source-7.3}
# trixie-backports carries the newest kernels for Debian 13; the package is
# architecture-independent (only the source tarball), so any host can use it.
SUITE=trixie-backports
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BINARIES=(iommufd iommufd_fail_nth)
# UAPI headers the selftest reaches (<linux/vfio.h>, <linux/iommufd.h> via
# iommufd_test.h) and their <linux/...> includes; the host's linux-libc-dev
# is older than the selftest and lacks its structs. <asm/...> headers stay the
# host's: the selftest takes only types and __NR_pidfd_open (5.3) from them.
UAPI=(iommufd vfio types ioctl stddef posix_types)

build_only=0 refresh=0 results="" hugepages=128 mnt="" only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) build_only=1 ;;
        --refresh) refresh=1 ;;
        --results) results=$2; shift ;;
        --hugepages) hugepages=$2; shift ;;
        --mount) mnt=$2; shift ;;
        --only) only=$2; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kselftest.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
harness_args=("$@")
if [ -n "$only" ]; then
    case " ${BINARIES[*]} " in *" $only "*) BINARIES=("$only") ;;
        *) echo "kselftest.sh: --only takes one of: ${BINARIES[*]}" >&2; exit 2 ;; esac
fi

die() { echo "kselftest.sh: $*" >&2; exit 4; }
say() { echo "kselftest.sh: $*" >&2; }
# Seconds with milliseconds between two `date +%s%N` readings.
ms() { local d=$(( ($2 - $1) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

[ "$(id -u)" = 0 ] || die "run as root (apt, the hugetlb pool and the mount need it)"

mkdir -p "$CACHE"
# One run at a time: the build directory and the global hugetlb pool are shared.
exec 9>"$CACHE/lock"
flock 9

# --- host tools --------------------------------------------------------------

host_packages() {
    local missing=()
    command -v unifdef >/dev/null || missing+=(unifdef)
    [ -e /usr/include/sys/capability.h ] || missing+=(libcap-dev)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v gcc >/dev/null || missing+=(gcc)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt (another checkout's setup) rather than fail on its lock.
    local install=(apt-get install -y -qq -o DPkg::Lock::Timeout=300)
    "${install[@]}" "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && "${install[@]}" "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
}

# --- the private apt configuration ------------------------------------------

# The URI of the machine's own Debian archive: the first apt source (one-line
# .list files, then deb822 .sources files) serving the machine's release itself
# (suite == VERSION_CODENAME), which is not a third-party repository, nor the
# security archive (no backports there), nor a medium apt cannot fetch from.
# trixie-backports lives in that same archive.
machine_mirror() {
    local f codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 0
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
            | awk -v want="$codename" '$1 == "deb" && $3 == want && $2 ~ /^(https?|ftp|file|mirror[+a-z]*):/ { print $2 }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$codename" '
             function flush() {
                 if (types ~ /(^| )deb( |$)/ && enabled != "no" && release \
                     && uri ~ /^(https?|ftp|file|mirror[+a-z]*):/) print uri
                 types = ""; uri = ""; enabled = ""; release = 0
             }
             /^[[:space:]]*$/ { flush(); next }
             /^[[:space:]]*#/ { next }
             tolower($1) == "types:"   { $1 = ""; types = $0 }
             tolower($1) == "uris:"    { uri = $2 }
             tolower($1) == "enabled:" { enabled = tolower($2) }
             tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == want) release = 1 }
             END { flush() }' "$f"
    done
}

APT_DIR=$CACHE/apt
apt_private() {
    # Dir::Etc::sourceparts points at an empty directory so that the machine's
    # sources.list.d is not read; its apt.conf.d still is (proxies and the like).
    "$@" -o Dir::Etc::sourcelist="$APT_DIR/sources.list" \
         -o Dir::Etc::sourceparts="$APT_DIR/sources.list.d" \
         -o Dir::State="$APT_DIR/state" \
         -o Dir::State::status=/var/lib/dpkg/status \
         -o Dir::Cache="$APT_DIR/cache" \
         -o Acquire::Languages=none \
         -o APT::Get::List-Cleanup=true
}

apt_setup() {
    local mirror=${IOMMUFS_KSELFTEST_MIRROR:-}
    if [ -z "$mirror" ]; then
        # sed, not head: reading everything spares machine_mirror a SIGPIPE,
        # which pipefail would turn into a failure.
        mirror=$(machine_mirror | sed -n 1p)
        [ -n "$mirror" ] || die "no Debian archive found in the machine's apt sources (set IOMMUFS_KSELFTEST_MIRROR)"
    fi
    [ -r "$KEYRING" ] || die "$KEYRING missing: install debian-archive-keyring"
    # trixie's archive keys came to bookworm in a point release of the keyring;
    # an older one cannot verify the suite.
    if command -v gpg >/dev/null && ! gpg --show-keys "$KEYRING" 2>/dev/null | grep '(13/trixie)' >/dev/null; then
        die "$KEYRING has no trixie keys: upgrade debian-archive-keyring (bookworm's 2023.3+deb12u2 or later has them)"
    fi
    mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/state/lists/partial" \
             "$APT_DIR/cache/archives/partial" "$APT_DIR/debs"
    echo "deb [signed-by=$KEYRING] $mirror $SUITE main" > "$APT_DIR/sources.list"
    say "apt update of $SUITE (private configuration in $APT_DIR)"
    # --error-on=any: an unreachable mirror is otherwise only a warning.
    apt_private apt-get -q --error-on=any update >"$APT_DIR/update.log" 2>&1 \
        || { cat "$APT_DIR/update.log" >&2; die "apt-get update of $SUITE from $mirror failed"; }
}

# The package to use: $PACKAGE, or if the suite does not have it, the newest
# linux-source-7.x it has (announced, since the expected results are per version).
pick_package() {
    if apt_private apt-cache show "$PACKAGE" >/dev/null 2>&1; then
        echo "$PACKAGE"
        return
    fi
    local alt
    alt=$(apt_private apt-cache pkgnames linux-source-7. 2>/dev/null \
              | { grep -E '^linux-source-7\.[0-9]+$' || true; } | sort -V | tail -n1)
    [ -n "$alt" ] || die "neither $PACKAGE nor any linux-source-7.x in $SUITE"
    say "WARNING: $PACKAGE is not in $SUITE; using $alt"
    echo "$alt"
}

# --- fetch, extract, sanitize, build -----------------------------------------

# A cached build is reused while the build steps themselves are unchanged.
RECIPE=$(sed -n -e '/^UAPI=/p' -e '/^fetch_and_build()/,/^}/p' "$0" | sha256sum | cut -c1-16)
STAMP=$CACHE/build.stamp

cached_build() {
    # "PACKAGE VERSION RECIPE" of the last good build, if its binaries are there.
    [ -f "$STAMP" ] || return 1
    read -r pkg ver recipe < "$STAMP" || return 1
    [ "$recipe" = "$RECIPE" ] || return 1
    for b in "${BINARIES[@]}"; do [ -x "$CACHE/$pkg/$ver/bin/$b" ] || return 1; done
    echo "$pkg $ver"
}

fetch_and_build() {
    local pkg ver deb top src inc bin t0 t1 size
    apt_setup
    pkg=$(pick_package)
    ver=$(apt_private apt-cache show "$pkg" | awk '/^Version:/ && v == "" { v = $2 } END { print v }')
    [ -n "$ver" ] || die "no version of $pkg"
    deb=$(ls "$APT_DIR/debs/${pkg}_${ver//:/%3a}_all.deb" 2>/dev/null || true)
    if [ -z "$deb" ]; then
        say "downloading $pkg $ver"
        t0=$(date +%s%N)
        # apt drops root to _apt to download; the directory must be its.
        chown _apt "$APT_DIR/debs" 2>/dev/null || true
        (cd "$APT_DIR/debs" && apt_private apt-get -q download "$pkg=$ver") >"$APT_DIR/download.log" 2>&1 \
            || { cat "$APT_DIR/download.log" >&2; die "apt-get download $pkg=$ver failed"; }
        t1=$(date +%s%N)
        deb=$(ls "$APT_DIR/debs/${pkg}_"*"_all.deb" | sort -V | tail -n1)
        size=$(stat -c %s "$deb")
        say "downloaded $(basename "$deb"): $((size / 1048576)) MiB in $(ms "$t0" "$t1")s"
        # Older versions of the package are no use any more.
        find "$APT_DIR/debs" -name "${pkg}_*_all.deb" ! -path "$deb" -delete
    fi

    top=${pkg}          # the tarball's top directory is named after the package
    src=$CACHE/$pkg/$ver/src
    inc=$CACHE/$pkg/$ver/include
    bin=$CACHE/$pkg/$ver/bin
    rm -rf "$CACHE/$pkg/$ver"
    mkdir -p "$src" "$inc/linux" "$bin"

    say "extracting the selftest, its harness and uAPI headers"
    local members=(
        "$top/tools/testing/selftests/iommu"
        "$top/tools/testing/selftests/kselftest_harness.h"
        "$top/tools/testing/selftests/kselftest.h"
        "$top/drivers/iommu/iommufd/iommufd_test.h"
        "$top/scripts/headers_install.sh"
    )
    local h
    for h in "${UAPI[@]}"; do members+=("$top/include/uapi/linux/$h.h"); done
    # The .deb holds the tarball; stream it, never keeping the 1 GiB tree.
    dpkg-deb --fsys-tarfile "$deb" \
        | tar -xO "./usr/src/$pkg.tar.xz" \
        | tar -xJ -C "$src" --strip-components=1 "${members[@]}" \
        || die "extracting from $(basename "$deb") failed"

    say "sanitizing uAPI headers (headers_install.sh, unifdef)"
    # headers_install.sh calls scripts/unifdef of the kernel tree it runs in;
    # Debian's unifdef is that same program.
    ln -sf "$(command -v unifdef)" "$src/scripts/unifdef"
    for h in "${UAPI[@]}"; do
        (cd "$src" && sh scripts/headers_install.sh "include/uapi/linux/$h.h" "$inc/linux/$h.h") \
            || die "headers_install.sh of linux/$h.h failed"
    done

    # The flags of tools/testing/selftests/iommu/Makefile and lib.mk for gcc:
    # the Makefile's CFLAGS and LDLIBS (read from it, so a new release's are
    # used), KHDR_INCLUDES as -isystem of the sanitized headers, lib.mk's
    # -D_GNU_SOURCE= and -I of the selftests directory.
    local mk=$src/tools/testing/selftests/iommu/Makefile cflags ldlibs
    cflags=$(sed -n 's/^CFLAGS[[:space:]]*+=[[:space:]]*//p' "$mk" | grep -v KHDR_INCLUDES | tr '\n' ' ')
    ldlibs=$(sed -n 's/^LDLIBS[[:space:]]*+=[[:space:]]*//p' "$mk" | tr '\n' ' ')
    grep -q 'KHDR_INCLUDES' "$mk" || die "the selftest Makefile changed: no KHDR_INCLUDES"
    for b in "${BINARIES[@]}"; do
        say "building $b"
        # In the source directory, as make does: __FILE__ in the harness's
        # messages is then "iommufd.c", not a path into the cache.
        # shellcheck disable=SC2086
        (cd "$src/tools/testing/selftests/iommu" \
            && gcc $cflags -isystem "$inc" -D_GNU_SOURCE= -I.. "$b.c" $ldlibs -o "$bin/$b") \
            || die "building $b failed"
    done
    echo "$pkg $ver $RECIPE" > "$STAMP"
    echo "$pkg $ver"
}

host_packages
built=""
[ "$refresh" = 1 ] || built=$(cached_build || true)
if [ -n "$built" ]; then
    say "using the cached build of $built"
else
    built=$(fetch_and_build)
fi
read -r pkg ver <<<"$built"
bin=$CACHE/$pkg/$ver/bin
say "$pkg $ver: ${BINARIES[*]} in $bin"
[ "$build_only" = 1 ] && exit 0

# --- run ----------------------------------------------------------------------

IOMMUFS=$ROOT/.venv/bin/iommufs
[ -x "$IOMMUFS" ] || die "$IOMMUFS missing: run bash scripts/setup.sh install"

POOL=/proc/sys/vm/nr_hugepages
added=0
give_back() {
    if [ "$added" -gt 0 ]; then
        local now
        now=$(cat "$POOL")
        echo $((now > added ? now - added : 0)) > "$POOL" || say "could not shrink the hugetlb pool back by $added"
    fi
}
trap give_back EXIT
# Leave through the EXIT trap on these too, so the pool is given back.
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$hugepages" -gt 0 ]; then
    # Add to the pool rather than set it, and take back what was added, so
    # that another user of hugetlb pages on the machine keeps its share.
    before=$(cat "$POOL")
    echo $((before + hugepages)) 2>/dev/null > "$POOL" || true
    added=$(( $(cat "$POOL") - before ))
    [ "$added" -ge "$hugepages" ] \
        || say "WARNING: asked for $hugepages hugetlb pages, got $added: the hugepage variants will fail"
fi

results=${results:-$CACHE/results.json}
logs=$CACHE/logs
mkdir -p "$logs"
run_args=()
[ -n "$mnt" ] && run_args+=(--mount "$mnt")
specs=() server_logs=()
for b in "${BINARIES[@]}"; do
    say "running $b under iommufs run"
    rm -f "$logs/$b.server.log"
    t0=$(date +%s%N)
    set +e
    # stdout and stderr in one pipe: the harness line-buffers stdout and
    # flushes before each test's fork, so each test's diagnostics stay between
    # its RUN line and its result. The timeout only guards CI against a hang.
    timeout -k 10 900 "$IOMMUFS" run "${run_args[@]}" --log "$logs/$b.server.log" \
        -- "$bin/$b" "${harness_args[@]}" >"$logs/$b.log" 2>&1 9>&-
    rc=$?
    set -e
    t1=$(date +%s%N)
    specs+=("$b=$logs/$b.log:$rc:$(ms "$t0" "$t1")")
    server_logs+=(--server-log "$b=$logs/$b.server.log")
done

set +e
python3 "$HERE/tap.py" --results "$results" \
    --meta package="$pkg" --meta version="$ver" --meta hugepages_added="$added" \
    --meta harness_args="${harness_args[*]}" "${server_logs[@]}" "${specs[@]}"
rc=$?
set -e
say "results in $results, logs in $logs"
[ "$rc" = 0 ] || exit "$rc"
python3 - "$results" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(1 if any(b["counts"]["FAIL"] for b in d["binaries"].values()) else 0)
EOF
