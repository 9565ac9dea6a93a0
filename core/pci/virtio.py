"""The modern virtio-pci transport, device side (virtio-pci.md §2-§8).

:class:`VirtioPci` is a model base class: a subclass names its virtio device
ID, queues, feature bits and device configuration, and handles chains. The
transport provides the vendor capabilities, the common configuration with
feature negotiation and the status state machine, queue setup, split
virtqueues through the DMA port, notifications (a notify write processes the
queue synchronously), MSI-X vector routing and INTx with ISR.

BAR layout (§2.5): BAR0, 32-bit non-prefetchable memory, 16 KiB: COMMON at
0x0000 (0x40 bytes), ISR at 0x1000, DEVICE at 0x2000 (when the device has a
configuration), NOTIFY at 0x3000 with multiplier 4 (queue q at 0x3000 + 4q).
BAR1, 32-bit memory, 4 KiB: MSI-X table at 0x000, PBA at 0x800.
"""
import struct

from . import caps
from .dma import DmaError
from .identity import BarSpec, Identity
from .model import Model, MsixLayout
from .virtqueue import NO_VECTOR, SplitQueue, VirtqError

VENDOR = 0x1AF4

# Feature bits (§5.1)
F_INDIRECT_DESC, F_EVENT_IDX, F_VERSION_1, F_ACCESS_PLATFORM = 28, 29, 32, 33

# device_status bits (§4.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 0x01, 0x02, 0x04, 0x08, 0x40, 0x80

# cfg_type (§2.2)
COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG, PCI_CFG = 1, 2, 3, 4, 5

COMMON_OFF, COMMON_LEN = 0x0000, 0x40
ISR_OFF, ISR_LEN = 0x1000, 0x1000
DEVICE_OFF = 0x2000
NOTIFY_OFF, NOTIFY_LEN, NOTIFY_MULT = 0x3000, 0x1000, 4
BAR0_SIZE = 0x4000

ISR_QUEUE, ISR_CONFIG = 0x1, 0x2

# Common configuration fields: offset -> (size, name) (§3.1)
_COMMON = {0x00: (4, "dfselect"), 0x04: (4, "device_feature"), 0x08: (4, "gfselect"),
           0x0C: (4, "driver_feature"), 0x10: (2, "msix_config"), 0x12: (2, "num_queues"),
           0x14: (1, "device_status"), 0x15: (1, "config_generation"), 0x16: (2, "queue_select"),
           0x18: (2, "queue_size"), 0x1A: (2, "queue_msix_vector"), 0x1C: (2, "queue_enable"),
           0x1E: (2, "queue_notify_off"), 0x20: (4, "queue_desc_lo"), 0x24: (4, "queue_desc_hi"),
           0x28: (4, "queue_driver_lo"), 0x2C: (4, "queue_driver_hi"), 0x30: (4, "queue_device_lo"),
           0x34: (4, "queue_device_hi")}
_ADDRS = {"queue_desc": "desc", "queue_driver": "driver", "queue_device": "device"}


def _virtio_cap(cfg_type, bar, offset, length, extra=b""):
    """Body of a virtio_pci_cap after its two-byte header (§2.1)."""
    return struct.pack("<BBBBHII", 16 + len(extra), cfg_type, bar, 0, 0, offset, length)[:14] + extra


class PciCfgWindow(caps.Vendor):
    """The PCI_CFG capability (§2.4): ``bar``, ``offset``, ``length`` and
    ``pci_cfg_data`` are writable; an access to the data performs a BAR access
    of ``length`` bytes with its side effects."""

    DATA = 16

    def __init__(self, model):
        body = _virtio_cap(PCI_CFG, 0, 0, 0, bytes(4))
        write = bytearray(len(body))
        write[4 - 2] = 0xFF                           # bar
        write[8 - 2:20 - 2] = b"\xff" * 12            # offset, length, data
        super().__init__(body, bytes(write))
        self.model = model

    def _target(self, cs):
        base = self.offset
        bar = cs.hw_get(base + 4, 1)
        off, length = cs.hw_get(base + 8, 4), cs.hw_get(base + 12, 4)
        if bar > 5 or length not in (1, 2, 4) or off % length:
            return None
        return bar, off, length

    def on_read(self, cs, rel, size, value):
        target = self._target(cs)
        if rel == self.DATA and target:
            bar, off, length = target
            data = self.model.bar_read(bar, off, length)
            cs.hw_set_bits(self.offset + self.DATA, 4, (1 << (8 * length)) - 1, data)
            return cs.hw_get(self.offset + rel, size)
        return value

    def on_write(self, cs, rel, size, value):
        target = self._target(cs)
        if rel == self.DATA and target:
            bar, off, length = target
            self.model.bar_write(bar, off, length, cs.hw_get(self.offset + self.DATA, length))


class VirtioPci(Model):
    """Base class of modern-only virtio-pci models (§1.3).

    Subclasses set ``virtio_id`` (device ID 0x1040 + it, §1.1),
    ``class_code``, ``queue_sizes`` (max size per queue, powers of two),
    ``features`` (offered bits, int) and ``device_config_len`` (0 = no DEVICE
    capability), and implement ``handle(queue, chain) -> int`` (bytes written
    into the chain's writable part), ``config_bytes() -> bytes`` and
    optionally ``config_write(offset, data)``, ``device_reset()``,
    ``accept_features(features) -> bool``.
    """

    virtio_id = 0
    class_code = 0xFF0000
    queue_sizes = (64,)
    features = (1 << F_VERSION_1) | (1 << F_ACCESS_PLATFORM)
    device_config_len = 0

    def __init__(self):
        super().__init__()
        self.identity = Identity(vendor=VENDOR, device=0x1040 + self.virtio_id, class_code=self.class_code,
                                 revision=1, subsystem_vendor=VENDOR, subsystem_id=0x1100, interrupt_pin=1)
        self.bars = (BarSpec(BAR0_SIZE), BarSpec(0x1000))
        self.msix = MsixLayout(len(self.queue_sizes) + 1, table_bar=1, table_offset=0, pba_bar=1,
                               pba_offset=0x800)
        self.queues = [SplitQueue(i, n) for i, n in enumerate(self.queue_sizes)]
        self.notifies = 0
        self.interrupts = {"msix": 0, "intx": 0, "suppressed": 0}
        self.needs_reset_reason = None
        self._reset_transport()

    def vendor_caps(self):
        notify = _virtio_cap(NOTIFY_CFG, 0, NOTIFY_OFF, NOTIFY_LEN, struct.pack("<I", NOTIFY_MULT))
        out = [caps.Vendor(_virtio_cap(COMMON_CFG, 0, COMMON_OFF, COMMON_LEN)),
               caps.Vendor(notify),
               caps.Vendor(_virtio_cap(ISR_CFG, 0, ISR_OFF, ISR_LEN))]
        if self.device_config_len:
            out.append(caps.Vendor(_virtio_cap(DEVICE_CFG, 0, DEVICE_OFF, self.device_config_len)))
        out.append(PciCfgWindow(self))
        return out

    # -- state ------------------------------------------------------------------

    def _reset_transport(self):
        """§4.4: status, features, selects, queues, vectors, ISR back to reset values."""
        self.status = 0
        self.dfselect = self.gfselect = 0
        self.driver_features = 0
        self.negotiated = 0
        self.msix_config = NO_VECTOR
        self.queue_select = 0
        self.config_generation = 0
        self.isr = 0
        self.needs_reset_reason = None
        for q in self.queues:
            q.reset()
        if self.fn is not None:
            self.fn.intx_set(False)

    def reset(self):
        """Function reset (FLR, VFIO_DEVICE_RESET): a virtio reset plus the
        device's own defaults (§4.4)."""
        self._reset_transport()
        self.device_reset()

    def device_reset(self):
        pass

    def accept_features(self, features):
        return True

    def has(self, bit):
        """True if feature ``bit`` was negotiated."""
        return bool(self.negotiated >> bit & 1)

    def _queue(self):
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    # -- BAR access ---------------------------------------------------------------

    def bar_read(self, bar, offset, size):
        if size == 8:
            return self.bar_read(bar, offset, 4) | self.bar_read(bar, offset + 4, 4) << 32
        if bar != 0:
            return 0
        if COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            image = self._common_image()
            rel = offset - COMMON_OFF
            return int.from_bytes(image[rel:rel + size], "little")
        if ISR_OFF <= offset < ISR_OFF + ISR_LEN:
            if offset != ISR_OFF:
                return 0
            value, self.isr = self.isr, 0             # read-to-clear, deasserts INTx (§7.3)
            self.fn.intx_set(False)
            return value
        if self.device_config_len and DEVICE_OFF <= offset < DEVICE_OFF + self.device_config_len:
            rel = offset - DEVICE_OFF
            data = self.config_bytes()[rel:rel + size]
            return int.from_bytes(data.ljust(size, b"\0"), "little")
        return 0                                      # notify area and holes read 0 (§7.1)

    def bar_write(self, bar, offset, size, value):
        if size == 8:
            self.bar_write(bar, offset, 4, value & 0xFFFFFFFF)
            self.bar_write(bar, offset + 4, 4, value >> 32)
            return
        if bar != 0:
            return
        if COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            self._common_write(offset - COMMON_OFF, size, value)
        elif NOTIFY_OFF <= offset < NOTIFY_OFF + NOTIFY_LEN:
            self.notify((offset - NOTIFY_OFF) // NOTIFY_MULT)
        elif self.device_config_len and DEVICE_OFF <= offset < DEVICE_OFF + self.device_config_len:
            self.config_write(offset - DEVICE_OFF, value.to_bytes(size, "little"))

    def config_bytes(self):
        return b""

    def config_write(self, offset, data):
        """Driver write into the device configuration; ignored unless a device allows it (§9.1)."""

    # -- common configuration (§3) ----------------------------------------------

    def _field(self, name):
        q = self._queue()
        if name == "device_feature":
            return (self.features >> (32 * self.dfselect)) & 0xFFFFFFFF if self.dfselect < 2 else 0
        if name == "driver_feature":
            return (self.driver_features >> (32 * self.gfselect)) & 0xFFFFFFFF if self.gfselect < 2 else 0
        if name == "num_queues":
            return len(self.queues)
        if name == "device_status":
            return self.status
        if name in ("dfselect", "gfselect", "msix_config", "queue_select", "config_generation"):
            return getattr(self, name)
        if q is None:
            return 0                                  # no such queue: per-queue fields read 0 (§3.3)
        if name == "queue_size":
            return q.size
        if name == "queue_msix_vector":
            return q.vector
        if name == "queue_enable":
            return int(q.enabled)
        if name == "queue_notify_off":
            return q.index
        base, half = name.rsplit("_", 1)
        addr = getattr(q, _ADDRS[base])
        return addr & 0xFFFFFFFF if half == "lo" else addr >> 32

    def _common_image(self):
        image = bytearray(COMMON_LEN)
        for off, (size, name) in _COMMON.items():
            image[off:off + size] = self._field(name).to_bytes(size, "little")
        return image

    def _common_write(self, rel, size, value):
        image = self._common_image()
        image[rel:rel + size] = value.to_bytes(size, "little")
        for off, (fsize, name) in _COMMON.items():
            if off < rel + size and rel < off + fsize:
                self._set_field(name, int.from_bytes(image[off:off + fsize], "little"))

    def _vector(self, value):
        """MSI-X vector rule (§3.4): NO_VECTOR or < table size, else NO_VECTOR."""
        return value if value == NO_VECTOR or value < self.msix.vectors else NO_VECTOR

    def _set_field(self, name, value):
        q = self._queue()
        if name in ("dfselect", "gfselect", "queue_select"):
            setattr(self, name, value)
        elif name == "driver_feature":
            if self.gfselect < 2 and not self.status & FEATURES_OK:
                shift = 32 * self.gfselect
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif name == "msix_config":
            self.msix_config = self._vector(value)
        elif name == "device_status":
            self._write_status(value)
        elif q is None or name in ("device_feature", "num_queues", "config_generation", "queue_notify_off"):
            return
        elif name == "queue_msix_vector":
            q.vector = self._vector(value)
        elif name == "queue_enable":
            if value == 1 and not q.enabled:
                q.enable()
        elif q.enabled:
            return                                    # size and addresses are latched (§3.3)
        elif name == "queue_size":
            q.size = value
        else:
            base, half = name.rsplit("_", 1)
            attr = _ADDRS[base]
            addr = getattr(q, attr)
            addr = (addr & ~0xFFFFFFFF) | value if half == "lo" else (addr & 0xFFFFFFFF) | (value << 32)
            setattr(q, attr, addr)

    def _write_status(self, value):
        if value == 0:
            self.reset()                              # synchronous: reads 0 at once (§4.4)
            return
        new = value & ~self.status
        if new & FEATURES_OK:
            f = self.driver_features
            ok = not f & ~self.features and f >> F_VERSION_1 & 1 and self.accept_features(f)
            if ok:
                self.negotiated = f
            else:
                value &= ~FEATURES_OK                 # refused: the driver reads it back (§4.3)
        # NEEDS_RESET is the device's bit: the driver cannot set or clear it.
        self.status = (value & ~NEEDS_RESET) | (self.status & NEEDS_RESET)
        if new & DRIVER_OK and self.status & DRIVER_OK:
            for q in self.queues:                     # buffers may already be waiting (§6.5)
                self.process(q.index)

    # -- queues, notifications, interrupts ----------------------------------------

    def notify(self, index):
        """Available-buffer notification for queue ``index`` (§7.1): processed now."""
        self.notifies += 1
        if index < len(self.queues):
            self.process(index)

    def process(self, index):
        """Drain queue ``index`` (§6.5) unless the device is not live."""
        q = self.queues[index]
        if not self.status & DRIVER_OK or self.status & NEEDS_RESET or not q.enabled:
            return
        event_idx = self.has(F_EVENT_IDX)
        old = q.used_idx
        try:
            while True:
                chain = q.pop(self.fn, indirect=self.has(F_INDIRECT_DESC))
                if chain is None:
                    if not event_idx:
                        break
                    q.set_avail_event(self.fn)
                    if q.avail_idx(self.fn) == q.last_avail:      # closes the race of §6.7
                        break
                    continue
                q.push(self.fn, chain.head, self.handle(q, chain))
            if q.needs_interrupt(self.fn, old, event_idx):
                self.interrupt_queue(q)
            elif q.used_idx != old:
                self.interrupts["suppressed"] += 1
        except VirtqError as e:
            self.fail(str(e))
        except DmaError as e:
            # A data-buffer fault the device type has no status byte for
            # (virtio-rng): the chain can be neither completed nor failed.
            self.fail(f"DMA fault at {e.iova:#x}: errno {e.errno}")

    def handle(self, queue, chain):
        """Execute one request; returns bytes written into the writable part."""
        raise NotImplementedError

    def interrupt_queue(self, q):
        """Used-buffer notification (§7.2): the queue's vector under MSI-X
        (none if NO_VECTOR), else ISR bit 0 and INTx."""
        if self.fn.irq_type() == "msix":
            if q.vector != NO_VECTOR:
                self.interrupts["msix"] += 1
                self.fn.msix_raise(q.vector)
            return
        self.isr |= ISR_QUEUE
        self.interrupts["intx"] += 1
        self.fn.intx_set(True)

    def config_changed(self):
        """Configuration notification (§7.2, §7.4): ISR bit 1 always, then the
        config vector under MSI-X or INTx."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        self.isr |= ISR_CONFIG
        if self.fn.irq_type() == "msix":
            if self.msix_config != NO_VECTOR:
                self.interrupts["msix"] += 1
                self.fn.msix_raise(self.msix_config)
            return
        self.interrupts["intx"] += 1
        self.fn.intx_set(True)

    def fail(self, reason):
        """DEVICE_NEEDS_RESET (§4.5): stop, and tell a live driver."""
        self.needs_reset_reason = reason
        self.status |= NEEDS_RESET
        if self.status & DRIVER_OK:
            self.config_changed()

    def state(self):
        return {"status": self.status, "features_offered": self.features,
                "driver_features": self.driver_features, "negotiated": self.negotiated,
                "msix_config": self.msix_config, "isr": self.isr, "notifies": self.notifies,
                "interrupts": dict(self.interrupts), "needs_reset": self.needs_reset_reason,
                "queues": [q.state() for q in self.queues]}

