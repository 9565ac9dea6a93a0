#!/bin/busybox sh
# /init of the iommufs test guest (packed by scripts/guest/build_initramfs.py).
#
# It reports on the serial console, one "IOMMUFS-<KEY> <values>" line per
# fact, which scripts/guest/boot.py parses; then it powers off. What it does is
# chosen on the kernel command line, so one initramfs serves every test:
#
#   iommufs.disk=NAME        block device to check (default: first vd*)
#   iommufs.sha=0            skip the whole-disk sha256
#   iommufs.write=SECTOR:HH  write 512 bytes of 0xHH at SECTOR, O_DIRECT, then flush
#   iommufs.hwrng=N          read N bytes from /dev/hwrng (default 64; 0 skips)
#   iommufs.read=0           skip the O_DIRECT sequential read timing
#   iommufs.readbs=SIZE      block size of that read (default 1M)
#   iommufs.dmesg=1          dump the kernel log before powering off
#   iommufs.wait=SECONDS     how long to wait for the disk (default 20)
#   iommufs.straydma=IOVA    program an iommufs dma-engine (d1f5:0001, no guest
#                            driver) through /dev/mem to fill 4 KiB at IOVA, a
#                            guest-physical address the VMM never mapped
#
# Lines: INIT, MODULE-ERROR, DISK, DISK-ABSENT, DISK-SHA256 <hex> <bytes>,
# WRITE <sector> <hh> <sha256 of the block read back>, HWRNG <hex>,
# READ-MBPS <MB/s> <bytes> <usecs>, PCI <bdf> <vendor>:<device> class=.. driver=..,
# VIRTIO <name> device=.. status=.. features=.., STRAYDMA status=.. error=..
# fault=.., ERROR <text>, DONE <uptime>.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "IOMMUFS-$*"; }
say "INIT $(cut -d' ' -f1 /proc/uptime)"

# Dotted parameters are not given to init as arguments or environment: the
# kernel keeps them for modules, so read them back from /proc/cmdline.
param() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "iommufs.$1="*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}

# Microseconds since the epoch: busybox date has no %N, adjtimex has usecs.
now_us() {
    adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%.0f\n", s * 1000000 + u }'
}

for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" 2>/tmp/insmod.err || say "MODULE-ERROR $m $(cat /tmp/insmod.err)"
done

finish() {
    if [ "$(param dmesg)" = 1 ]; then dmesg | sed 's/^/IOMMUFS-DMESG /'; fi
    say "DONE $(cut -d' ' -f1 /proc/uptime)"
    sync
    poweroff -f
    # poweroff -f does not return; if it did, the kernel would panic on exit.
    sleep 3600
}

# Wait for a disk only if one is coming: a named one, or a virtio block
# device (ID 2) the transport found; an rng-only guest goes straight on.
disk=$(param disk)
expect=$disk
grep -qx 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null && expect=${expect:-vd}
waited=0
limit=$(param wait || echo 20)
while [ -n "$expect" ]; do
    if [ -z "$(param disk)" ]; then
        disk=$(ls /sys/block 2>/dev/null | grep '^vd' | head -n1)
    fi
    [ -n "$disk" ] && [ -b "/dev/$disk" ] && break
    if [ "$waited" -ge $((limit * 10)) ]; then
        say "ERROR no disk after ${limit}s"
        disk=
        break
    fi
    usleep 100000
    waited=$((waited + 1))
done
[ -n "$expect" ] || say "DISK-ABSENT"

if [ -n "$disk" ]; then
    dev=/dev/$disk
    bytes=$(blockdev --getsize64 "$dev")
    say "DISK $disk $bytes"

    if [ "$(param sha)" != 0 ]; then
        set -- $(sha256sum "$dev")
        say "DISK-SHA256 $1 $bytes"
    fi

    if w=$(param write); then
        sector=${w%%:*}
        hh=${w#*:}
        oct=$(printf '%o' "0x$hh")
        dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\000' "\\$oct" > /tmp/block
        # O_DIRECT so the request reaches the device now, fsync for its FLUSH.
        if dd if=/tmp/block of="$dev" bs=512 seek="$sector" count=1 \
                conv=notrunc,fsync oflag=direct 2>/tmp/dd.err; then
            sync
            blockdev --flushbufs "$dev"
            set -- $(dd if="$dev" bs=512 skip="$sector" count=1 iflag=direct 2>/dev/null | sha256sum)
            say "WRITE $sector $hh $1"
        else
            say "ERROR write: $(cat /tmp/dd.err)"
        fi
    fi

    if [ "$(param read)" != 0 ]; then
        bs=$(param readbs || echo 1M)
        t0=$(now_us)
        dd if="$dev" of=/dev/null bs="$bs" iflag=direct 2>/dev/null
        t1=$(now_us)
        us=$((t1 - t0))
        [ "$us" -gt 0 ] || us=1
        mbps=$(awk -v b="$bytes" -v u="$us" 'BEGIN { printf "%.2f", b / u }')
        say "READ-MBPS $mbps $bytes $us"
    fi
fi

n=$(param hwrng || echo 64)
if [ "$n" != 0 ]; then
    if [ -c /dev/hwrng ]; then
        say "HWRNG-SOURCE $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
        say "HWRNG $(head -c "$n" /dev/hwrng | od -An -v -tx1 | tr -d ' \n')"
    else
        say "HWRNG-ABSENT"
    fi
fi

# A device DMA the VMM did not map: the dma-engine's BAR0 is programmed with
# loads and stores through /dev/mem (no driver claims it), after Memory Space
# and Bus Master are set in its config space (COMMAND = 0x0006).
if iova=$(param straydma); then
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = 0xd1f5 ] || continue
        printf '\006\000' | dd of="$d/config" bs=1 seek=4 conv=notrunc 2>/dev/null
        bar=$(head -n1 "$d/resource" | cut -d' ' -f1)
        reg() { printf '0x%x' $((bar + $1)); }
        devmem "$(reg 0x10)" 32 $((iova & 0xffffffff))      # DST_LO
        devmem "$(reg 0x14)" 32 $((iova >> 32))             # DST_HI
        devmem "$(reg 0x18)" 32 4096                        # LENGTH
        devmem "$(reg 0x1c)" 32 1                           # OP: fill
        devmem "$(reg 0x20)" 32 0x5a5a5a5a                  # PATTERN
        devmem "$(reg 0x2c)" 32 1                           # DOORBELL
        say "STRAYDMA status=$(devmem "$(reg 0x30)" 32) error=$(devmem "$(reg 0x34)" 32) fault=$(devmem "$(reg 0x3c)" 32)$(devmem "$(reg 0x38)" 32 | cut -c3-)"
        break
    done
fi

for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    drv=-
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    v=$(cat "$d/vendor"); id=$(cat "$d/device")
    say "PCI ${d##*/} ${v#0x}:${id#0x} class=$(cat "$d/class") driver=$drv"
done
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] || continue
    say "VIRTIO ${d##*/} device=$(cat "$d/device") status=$(cat "$d/status" 2>/dev/null) features=$(cat "$d/features" 2>/dev/null)"
done

finish
