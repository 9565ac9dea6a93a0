#!/usr/bin/env bash
# Run one VFIO selftest binary on the emulated functions, inside `iommufs run`
# (scripts/vfio_selftest.sh starts it there).
#
#   bash runner.sh BINARY LOGDIR [HARNESS ARGS...]
#
# Lists /sys/bus/pci/devices/01f5:* (the run's emulated functions, sorted),
# picks the targets by the binary's name (see vfio_selftest.sh) and runs the
# binary once per target with the BDF as its last argument, writing
# LOGDIR/BDF.log (stdout and stderr merged, as the harness interleaves them
# per test) and LOGDIR/BDF.status ("EXIT SECONDS").
set -uo pipefail

binary=$1 logdir=$2
shift 2
mapfile -t all < <(cd /sys/bus/pci/devices && ls -d 01f5:* 2>/dev/null | sort)
if [ ${#all[@]} = 0 ]; then
    echo "runner.sh: no emulated function under /sys/bus/pci/devices" >&2
    exit 3
fi
case "$(basename "$binary")" in
    vfio_iommufd_setup_test|vfio_dma_mapping_test) targets=("${all[0]}") ;;
    *) targets=("${all[@]}") ;;
esac
for bdf in "${targets[@]}"; do
    t0=$(date +%s%N)
    timeout -k 5 600 "$binary" "$@" "$bdf" >"$logdir/$bdf.log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    echo "$rc $(( (t1 - t0) / 1000000 ))" >"$logdir/$bdf.status"
    echo "runner.sh: $(basename "$binary") $bdf: exit $rc"
done
