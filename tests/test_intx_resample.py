"""INTx with an unmask eventfd (vfio-device.md §6.1: UNMASK|DATA_EVENTFD,
KVM's resample fd) through a real mount: the dma-engine's completion
interrupt asserts INTx, which signals the trigger eventfd and is
automasked; a second completion stays masked; a signal on the unmask
eventfd (what KVM writes at the guest's EOI) unmasks, and the line, still
asserted, signals the trigger again."""
import os
import select
import struct

from core import uapi
from devfs.client import Iommufd, VfioDevice

DEV = "0000:00:04.0"      # a dma-engine of the built-in topology
CONTROL, DOORBELL, STATUS, IRQ_STATUS, LENGTH, OP, DST = 0x28, 0x2C, 0x30, 0x44, 0x18, 0x1C, 0x10


def _readable(fd, timeout):
    return bool(select.select([fd], [], [], timeout)[0])


def _count(fd):
    return struct.unpack("<Q", os.read(fd, 8))[0]


def test_unmask_eventfd_unmasks_intx(mount):
    with Iommufd(mount.path) as iommufd, VfioDevice(mount.path, DEV) as dev:
        dev.bind(iommufd)
        dev.config_write(0x04, 2, 0x0002)          # memory decode; bus master off: no DMA needed
        trigger = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        unmask = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            dev.set_irq_eventfds(uapi.VFIO_PCI_INTX_IRQ_INDEX, [trigger])
            dev.set_irqs(uapi.VFIO_PCI_INTX_IRQ_INDEX,
                         uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_UNMASK,
                         0, 1, struct.pack("<i", unmask))

            def ring():
                # A zero-length fill completes at once and interrupts.
                for off, v in ((DST, 0x1000), (LENGTH, 0), (OP, 1), (CONTROL, 2), (DOORBELL, 1)):
                    dev.region_write(0, off, struct.pack("<I", v))

            ring()
            assert _readable(trigger, 5) and _count(trigger) == 1
            # Automasked: the device clears its line and interrupts again,
            # but nothing is signalled while masked.
            dev.region_write(0, IRQ_STATUS, struct.pack("<I", 1))
            ring()
            assert not _readable(trigger, 0.3)
            # KVM's resample: a signal on the unmask eventfd unmasks INTx; the
            # line is still asserted, so the trigger fires again.
            os.write(unmask, struct.pack("<Q", 1))
            assert _readable(trigger, 5) and _count(trigger) == 1
            # The server drained the unmask eventfd as the kernel's virqfd does.
            assert not _readable(unmask, 0.3)
        finally:
            dev.trigger_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0, 0)
            os.close(trigger)
            os.close(unmask)
