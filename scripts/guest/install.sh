#!/usr/bin/env bash
# Install what booting a test guest needs: QEMU >= 10.0, a Debian kernel with
# its virtio modules, and busybox-static for the initramfs.
#
#   bash scripts/guest/install.sh            # as root; idempotent
#   bash scripts/guest/install.sh --refresh  # also take a newer Debian kernel
#
# Artifacts land in $IOMMUFS_GUEST_CACHE (default /var/cache/iommufs-guest),
# described by its manifest.json, which scripts/guest/boot.py reads.
# Nothing here asks questions: CI runs it on a clean machine with no stdin.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${IOMMUFS_GUEST_CACHE:-/var/cache/iommufs-guest}
PY=${PYTHON:-python3}
QEMU_MIN_MAJOR=10
REFRESH=0
[ "${1:-}" = --refresh ] && REFRESH=1
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt (another checkout's setup, unattended upgrades)
# instead of failing on its lock.
APT_INSTALL=(apt-get install -y -qq -o DPkg::Lock::Timeout=300)

log() { echo "guest-install: $*" >&2; }

. /etc/os-release
CODENAME=${VERSION_CODENAME:-bookworm}

qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null || return 1
    local v
    v=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9]*\)\..*/\1/p')
    [ -n "$v" ] && [ "$v" -ge "$QEMU_MIN_MAJOR" ]
}

# Print "URI<TAB>SIGNED-BY" of the first source serving the release itself
# (suite == codename), from deb822 .sources files and one-line .list files.
# The backports suite lives in the same archive, so this is its mirror too.
main_archive() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk -v want="$CODENAME" '
            function flush() {
                if (deb && uri != "" && hasmain) { print uri "\t" key; found = 1; exit }
                deb = 0; uri = ""; key = ""; hasmain = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"     { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:"      { uri = $2 }
            tolower($1) == "suites:"    { for (i = 2; i <= NF; i++) if ($i == want) hasmain = 1 }
            tolower($1) == "signed-by:" { key = $2 }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        # Options in [...] come between "deb" and the URI.
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
            | awk -v want="$CODENAME" '$1 == "deb" && $3 == want { print $2 "\t"; exit }'
    done
}

have_backports_source() {
    grep -rqsE "(^|[[:space:]])${CODENAME}-backports([[:space:]]|$)" \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

add_backports_source() {
    local line uri key
    line=$(main_archive | head -n1)
    uri=${line%%$'\t'*}
    key=${line#*$'\t'}
    if [ -z "$uri" ]; then
        log "no apt source for '$CODENAME' found; cannot derive the backports mirror"
        exit 1
    fi
    [ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
    log "adding ${CODENAME}-backports from the machine's own mirror"
    # The backports Release file is NotAutomatic/ButAutomaticUpgrades, so apt
    # gives it priority 100: nothing comes from it unless asked with -t.
    cat > /etc/apt/sources.list.d/iommufs-backports.sources <<EOF
Types: deb
URIs: $uri
Suites: ${CODENAME}-backports
Components: main
Signed-By: $key
EOF
}

install_packages() {
    local need_update=0
    if [ "$CODENAME" = bookworm ] && ! have_backports_source; then
        add_backports_source
        need_update=1
    fi
    if qemu_ok && command -v qemu-img >/dev/null && [ -x /bin/busybox ] \
        && have_busybox_static; then
        return 0
    fi
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -i backports)" ] || need_update=1
    if [ "$need_update" = 1 ] || ! apt-cache show busybox-static >/dev/null 2>&1; then
        apt-get update -qq
    fi
    "${APT_INSTALL[@]}" busybox-static >/dev/null
    if [ "$CODENAME" = bookworm ]; then
        "${APT_INSTALL[@]}" -t "${CODENAME}-backports" qemu-system-x86 qemu-utils >/dev/null
    else
        "${APT_INSTALL[@]}" qemu-system-x86 qemu-utils >/dev/null
    fi
    if ! qemu_ok; then
        log "QEMU >= $QEMU_MIN_MAJOR.0 is required; got: $(qemu-system-x86_64 --version | head -n1)"
        exit 1
    fi
}

have_busybox_static() {
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'
}

# The cloud flavour boots faster (fewer drivers probing) and has the virtio
# drivers; the generic one is the fallback if a release lacks it.
kernel_package() {
    local meta dep
    for meta in linux-image-cloud-amd64 linux-image-amd64; do
        dep=$(apt-cache depends "$meta" 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        if [ -n "$dep" ]; then
            echo "$dep"
            return 0
        fi
    done
    return 1
}

fetch_deb() {
    # apt's sandbox user (_apt) must be able to write the .deb here.
    chmod 755 "$FETCH"
    (cd "$FETCH" && apt-get download -qq "$1" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
    ls "$FETCH"/*.deb >/dev/null 2>&1
}

install_kernel() {
    local pkg ver stamp deb
    # Once extracted, the kernel is kept: a newer Debian kernel is taken only
    # on request, so a run costs no apt queries and a test guest stays put.
    if [ "$REFRESH" = 0 ] && [ -f "$CACHE/manifest.json" ] && [ -f "$CACHE/kernel.stamp" ] \
        && [ -f "$CACHE/kernel/vmlinuz" ]; then
        return 0
    fi
    pkg=$(kernel_package) || { apt-get update -qq; pkg=$(kernel_package); }
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
    stamp="$pkg $ver"
    if [ -f "$CACHE/manifest.json" ] && [ "$(cat "$CACHE/kernel.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    log "fetching $pkg $ver"
    mkdir -p "$CACHE"
    rm -rf "$CACHE"/.fetch.* "$CACHE"/.kernel.new
    FETCH=$(mktemp -d "$CACHE/.fetch.XXXXXX")
    trap 'rm -rf "$FETCH"' EXIT
    if ! fetch_deb "$pkg"; then
        # Package lists older than the mirror name a kernel it no longer has.
        apt-get update -qq
        pkg=$(kernel_package)
        ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
        stamp="$pkg $ver"
        fetch_deb "$pkg" || { log "cannot download $pkg"; exit 1; }
    fi
    deb=$(ls "$FETCH"/*.deb)
    # Only vmlinuz and a few modules are kept; the unpacked tree is dropped.
    dpkg-deb -x "$deb" "$FETCH/root"
    "$PY" "$HERE/extract_kernel.py" --root "$FETCH/root" --out "$CACHE" \
        --package "$pkg" --version "$ver" >&2
    echo "$stamp" > "$CACHE/kernel.stamp"
    rm -rf "$FETCH"
    trap - EXIT
}

install_packages
install_kernel
"$PY" "$HERE/build_initramfs.py" --cache "$CACHE" --if-stale >/dev/null
log "ready: $(qemu-system-x86_64 --version | head -n1); kernel $(cat "$CACHE/kernel.stamp")"
