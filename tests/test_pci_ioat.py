"""The ioat (CBDMA) model driven as the kernel's VFIO selftest ioat driver
drives it (tools/testing/selftests/vfio/lib/drivers/ioat/ioat.c), plus the
config-space gap hook it needs (vfio's raw pass-through, vfio-device.md §5)."""
import struct

from core.pci import FunctionOptions, PciDevice
from core.pci import consts as C
from core.pci.config import ConfigSpace
from core.pci.identity import Identity
from core.pci.models import identity_of, make_model
from core.pci.models import ioat as I
from core.topology import MODELS, Topology
from test_pci_fakes import RamPort, Sink, fds

DESC = 0x1000        # the driver's state page: its one descriptor
SRC, DST = 0x4000, 0x8000
HOLE = 0x40000       # an IOVA nothing maps


def device():
    port = RamPort(size=0x20000)
    dev = PciDevice(make_model("ioat"), port, FunctionOptions())
    # vfio-pci enables the function at open, so the driver's probe reads VER
    # before it writes COMMAND; the emulated function starts with MEM clear.
    cfg_w(dev, C.COMMAND, C.CMD_MEMORY, 2)
    sink = Sink("msix0")
    return dev, port, sink


def w(dev, off, size, value):
    dev.region_write(0, off, value.to_bytes(size, "little"))


def r(dev, off, size):
    return int.from_bytes(dev.region_read(0, off, size), "little")


def cfg_r(dev, off):
    return int.from_bytes(dev.region_read(C.CONFIG_REGION, off, 4), "little")


def cfg_w(dev, off, value, size=4):
    dev.region_write(C.CONFIG_REGION, off, value.to_bytes(size, "little"))


def status(dev):
    return r(dev, I.CHANSTS, 8) & I.STS_STATUS


def reset(dev):
    """ioat_reset: clear errors (config and CHANERR), CHANCMD.RESET, poll."""
    cfg_w(dev, I.PCI_CHANERR_INT, cfg_r(dev, I.PCI_CHANERR_INT))
    cfg_w(dev, I.PCI_CHANERR_INT, cfg_r(dev, I.PCI_DMAUNCERRSTS))
    w(dev, I.CHANERR, 4, r(dev, I.CHANERR, 4))
    w(dev, I.CHANCMD, 1, I.CHANCMD_RESET)
    assert r(dev, I.CHANCMD, 1) & I.CHANCMD_RESET == 0
    assert status(dev) == I.STS_HALTED


def init(dev, sink):
    """ioat_init: probe (IDs, VER), COMMAND, reset, INTRCTRL, MSI-X on."""
    assert cfg_r(dev, 0) == 0x8086 | 0x2021 << 16
    assert r(dev, I.VER, 1) in (0x32, 0x33)
    cfg_w(dev, C.COMMAND, C.CMD_MEMORY | C.CMD_MASTER | C.CMD_INTX_DISABLE, 2)
    reset(dev)
    w(dev, I.INTRCTRL, 1, I.INTRCTRL_MSIX_VECTOR_CONTROL)
    assert dev.irq_info(C.MSIX)[1] == 1
    dev.set_irqs(C.DATA_EVENTFD | C.ACTION_TRIGGER, C.MSIX, 0, 1, fds(5), {5: sink})
    return 1 << r(dev, I.XFERCAP, 1)


def start(dev, port, src, dst, size, count=1, interrupt=False, ctl_extra=0):
    """__ioat_memcpy_start: a self-linked descriptor, CHAINADDR, CHANCTRL, DMACOUNT."""
    ctl = (I.OP_COPY << 24) | (I.CTL_INT_EN if interrupt else 0) | ctl_extra
    port.put(DESC, struct.pack("<IIQQQ", size, ctl, src, dst, DESC) + bytes(32))
    w(dev, I.CHAINADDR, 8, DESC)
    w(dev, I.CHANCTRL, 2, I.CHANCTRL_INT_REARM | I.CHANCTRL_ANY_ERR_ABORT_EN)
    w(dev, I.DMACOUNT, 2, count)


def wait(dev):
    """ioat_memcpy_wait: DONE then SUSPEND, or HALTED (then reset): 0 / -1."""
    s = status(dev)
    if s == I.STS_HALTED:
        reset(dev)
        return -1
    assert s == I.STS_DONE
    w(dev, I.CHANCMD, 1, I.CHANCMD_SUSPEND)
    assert status(dev) == I.STS_SUSPENDED
    return 0


def memcpy(dev, port, src, dst, size, maxsize):
    off = 0
    while off < size:
        n = min(size - off, maxsize)
        start(dev, port, src + off, dst + off, n)
        if wait(dev):
            return -1
        off += n
    return 0


def test_identity_and_registration():
    assert "ioat" in MODELS
    assert identity_of("ioat") == (0x8086, 0x2021, 0x088000)
    topo = Topology.from_string('[[device]]\nname = "0000:00:06.0"\nmodel = "ioat"\n')
    assert [(d.vendor, d.device_id) for d in topo.devices] == [(0x8086, 0x2021)]
    dev, _, _ = device()
    assert r(dev, I.CHANCNT, 1) == 1 and r(dev, I.VER, 1) == 0x33
    assert r(dev, I.DMA_COMP, 2) == I.DMA_COMP_V2
    assert dev.region_info(0).size == 0x4000 and dev.region_info(1).size == 0
    assert dev.irq_info(C.MSI)[1] == 0


def test_init_memcpy_success_no_msi():
    dev, port, sink = device()
    maxsize = init(dev, sink)
    assert maxsize == 4096
    data = bytes(i * 7 & 0xFF for i in range(4 * maxsize))
    port.put(SRC, data)
    port.put(DST, b"y" * len(data))
    assert memcpy(dev, port, SRC, DST, len(data), maxsize) == 0
    assert port.get(DST, len(data)) == data
    assert sink.take() == 0
    # CHANSTS carries the last completed descriptor's address.
    assert r(dev, I.CHANSTS, 8) & I.STS_ADDR == DESC
    assert dev.state()["model_state"]["descriptors"] == 4


def test_count_runs_the_self_linked_descriptor_count_times():
    dev, port, sink = device()
    init(dev, sink)
    port.put(SRC, b"z" * 64)
    start(dev, port, SRC, DST, 64, count=100)
    assert wait(dev) == 0 and port.get(DST, 64) == b"z" * 64
    st = dev.state()["model_state"]
    assert st["descriptors"] == 100 and st["bytes_moved"] == 6400


def test_unmapped_source_or_destination_halts_with_chanerr_and_no_msi():
    dev, port, sink = device()
    init(dev, sink)
    start(dev, port, HOLE, DST, 64)
    assert status(dev) == I.STS_HALTED
    assert r(dev, I.CHANERR, 4) == I.ERR_READ_DATA
    w(dev, I.DMACOUNT, 2, 1)                        # halted with an error: ignored
    assert r(dev, I.CHANERR, 4) == I.ERR_READ_DATA
    assert wait(dev) == -1 and r(dev, I.CHANERR, 4) == 0
    start(dev, port, SRC, HOLE, 64)
    assert r(dev, I.CHANERR, 4) == I.ERR_WRITE_DATA
    assert wait(dev) == -1
    assert sink.take() == 0
    # The channel works again after the reset.
    port.put(SRC, b"ok")
    assert memcpy(dev, port, SRC, DST, 2, 4096) == 0 and port.get(DST, 2) == b"ok"


def test_send_msi_signals_vector_0_once_per_rearm():
    dev, port, sink = device()
    init(dev, sink)
    start(dev, port, SRC, DST, 8, interrupt=True)
    assert wait(dev) == 0 and sink.take() == 1
    assert r(dev, I.ATTNSTATUS, 4) == 1
    assert r(dev, I.INTRCTRL, 1) & I.INTRCTRL_INT_STATUS
    # Not rearmed: a second int_en descriptor does not interrupt.
    w(dev, I.DMACOUNT, 2, 2)
    assert sink.take() == 0
    start(dev, port, SRC, DST, 8, interrupt=True)   # writes CHANCTRL.INT_REARM
    assert sink.take() == 1


def test_error_interrupt_and_completion_writeback():
    dev, port, sink = device()
    init(dev, sink)
    w(dev, I.CHANCMP, 8, 0x2000)
    start(dev, port, SRC, DST, 16, ctl_extra=I.CTL_COMPL_WRITE)
    assert int.from_bytes(port.get(0x2000, 8), "little") == DESC | I.STS_ACTIVE
    wait(dev)
    w(dev, I.CHANCMP, 8, HOLE)
    start(dev, port, SRC, DST, 16, ctl_extra=I.CTL_COMPL_WRITE)
    assert r(dev, I.CHANERR, 4) == I.ERR_COMPLETION_ADDR
    reset(dev)
    port.put(DESC, struct.pack("<IIQQQ", 16, 0x87 << 24, SRC, DST, DESC))   # XOR: not offered
    w(dev, I.CHAINADDR, 8, DESC)
    w(dev, I.CHANCTRL, 2, I.CHANCTRL_INT_REARM | I.CHANCTRL_ERR_INT_EN)
    w(dev, I.DMACOUNT, 2, 1)
    assert r(dev, I.CHANERR, 4) == I.ERR_CONTROL and sink.take() == 1
    reset(dev)
    start(dev, port, SRC, DST, 8192)
    assert r(dev, I.CHANERR, 4) == I.ERR_LENGTH
    reset(dev)
    w(dev, I.CHAINADDR, 8, HOLE)
    w(dev, I.DMACOUNT, 2, 1)
    assert r(dev, I.CHANERR, 4) == I.ERR_CHAIN_ADDR_VALUE


def test_null_descriptor_and_dword_halves():
    dev, port, sink = device()
    init(dev, sink)
    port.put(DESC, struct.pack("<IIQQQ", 1, I.CTL_NULL, 0, 0, DESC))
    # The kernel's ioat driver writes CHAINADDR as two dwords on some versions.
    w(dev, I.CHAINADDR, 4, DESC)
    w(dev, I.CHAINADDR + 4, 4, 0)
    w(dev, I.DMACOUNT, 2, 1)
    assert status(dev) == I.STS_DONE and r(dev, I.CHANERR, 4) == 0
    assert r(dev, I.CHAINADDR, 8) == DESC and r(dev, I.DMACOUNT, 2) == 1


def test_bus_master_off_halts():
    dev, port, sink = device()
    init(dev, sink)
    cfg_w(dev, C.COMMAND, C.CMD_MEMORY, 2)
    start(dev, port, SRC, DST, 8)
    assert status(dev) == I.STS_HALTED and r(dev, I.CHANERR, 4) == I.ERR_CHAIN_ADDR_VALUE


def test_config_registers_rw1c_and_device_reset():
    dev, _, sink = device()
    model = dev.model
    model.config[I.PCI_CHANERR_INT] = 0x5
    model.config[I.PCI_DMAUNCERRSTS] = 0x30
    assert cfg_r(dev, I.PCI_CHANERR_INT) == 0x5 and cfg_r(dev, I.PCI_DMAUNCERRSTS) == 0x30
    cfg_w(dev, I.PCI_CHANERR_INT, 0x1)
    assert cfg_r(dev, I.PCI_CHANERR_INT) == 0x4
    cfg_w(dev, I.PCI_CHANERRMASK_INT + 1, 0xAB, size=1)
    assert cfg_r(dev, I.PCI_CHANERRMASK_INT) == 0xAB00
    assert dev.region_read(C.CONFIG_REGION, I.PCI_DMAUNCERRSTS, 1) == b"\x30"
    dev.reset()
    assert cfg_r(dev, I.PCI_CHANERR_INT) == 0 and status(dev) == I.STS_HALTED


def test_config_gaps_reach_the_events_raw():
    """Bytes no block owns go to gap_read/gap_write (vfio's unassigned_perms)."""
    class Events:
        def __init__(self):
            self.writes = []

        def gap_read(self, pos, size):
            return 0x11223344 >> (8 * (pos & 3))

        def gap_write(self, pos, size, value):
            self.writes.append((pos, size, value))

    ev = Events()
    cs = ConfigSpace(Identity(vendor=1, device=2), [None] * 6, events=ev)
    assert cs.read(0x200, 4) == bytes.fromhex("44332211")
    assert cs.read(0x201, 2) == bytes.fromhex("3322")
    cs.write(0x1FE, b"\xaa\xbb\xcc\xdd")
    assert ev.writes == [(0x1FE, 2, 0xBBAA), (0x200, 2, 0xDDCC)]
    assert cs.read(0, 2) == b"\x01\x00"           # owned bytes do not ask


# -- through a mount: the VFIO node, the IOAS, the caller's memory -----------------


def test_ioat_on_a_mount_through_the_iommu(mount_factory, tmp_path):
    """The selftest driver's sequence by region I/O on a real VFIO node (BAR
    mmap is not there yet): DMA reaches this process's memory through the
    IOAS; an IOVA outside it halts the channel; int_en signals the eventfd."""
    import os

    from devfs.client import Buffer, Iommufd, VfioDevice

    topo = tmp_path / "ioat.toml"
    topo.write_text('[[device]]\nname = "0000:00:06.0"\nmodel = "ioat"\n')
    m = mount_factory(args=("--topology", str(topo)))
    iommufd = Iommufd(m.path)
    dev = VfioDevice(m.path, "0000:00:06.0")
    dev.bind(iommufd)
    ioas = iommufd.ioas_alloc()
    dev.attach(ioas)
    ram = Buffer(1 << 20)
    base = 0x10000000
    iommufd.ioas_map(ioas, ram.va, len(ram), iova=base)

    def w(off, size, value):
        dev.region_write(0, off, value.to_bytes(size, "little"))

    def r(off, size):
        return int.from_bytes(dev.region_read(0, off, size), "little")

    assert dev.config_read(0, 4) == 0x8086 | 0x2021 << 16
    dev.config_write(C.COMMAND, 2, C.CMD_MEMORY | C.CMD_MASTER | C.CMD_INTX_DISABLE)
    assert r(I.VER, 1) == 0x33
    w(I.CHANERR, 4, r(I.CHANERR, 4))
    w(I.CHANCMD, 1, I.CHANCMD_RESET)
    assert r(I.CHANCMD, 1) == 0 and r(I.CHANSTS, 8) & I.STS_STATUS == I.STS_HALTED
    w(I.INTRCTRL, 1, I.INTRCTRL_MSIX_VECTOR_CONTROL)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    dev.set_irq_eventfds(C.MSIX, [efd])

    def copy(src, dst, size, interrupt=False):
        ctl = I.CTL_INT_EN if interrupt else 0
        ram[0:32] = struct.pack("<IIQQQ", size, ctl, src, dst, base)
        w(I.CHAINADDR, 8, base)
        w(I.CHANCTRL, 2, I.CHANCTRL_INT_REARM | I.CHANCTRL_ANY_ERR_ABORT_EN)
        w(I.DMACOUNT, 2, 1)
        return r(I.CHANSTS, 8) & I.STS_STATUS

    ram[0x1000:0x2000] = bytes(range(256)) * 16
    assert copy(base + 0x1000, base + 0x8000, 4096) == I.STS_DONE
    assert ram[0x8000:0x9000] == bytes(range(256)) * 16
    try:
        os.eventfd_read(efd)
        raise AssertionError("an interrupt without int_en")
    except BlockingIOError:
        pass
    w(I.CHANCMD, 1, I.CHANCMD_SUSPEND)
    assert r(I.CHANSTS, 8) & I.STS_STATUS == I.STS_SUSPENDED
    assert copy(base + len(ram), base + 0x8000, 64) == I.STS_HALTED
    assert r(I.CHANERR, 4) == I.ERR_READ_DATA
    w(I.CHANERR, 4, I.ERR_READ_DATA)
    w(I.CHANCMD, 1, I.CHANCMD_RESET)
    assert copy(base + 0x1000, base + 0x9000, 8, interrupt=True) == I.STS_DONE
    assert os.eventfd_read(efd) == 1
    dev.close()
    iommufd.close()
    os.close(efd)
