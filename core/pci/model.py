"""The interface between a PciDevice and the model behind its BARs.

As libvfio-user's device API (DESIGN.md "Code to learn from"): a model
declares its identity, BARs, ROM, interrupt capabilities and vendor
capabilities, handles BAR accesses synchronously, and asks its function
(``self.fn``, the PciDevice) for DMA and interrupts; it never sees the
transport. The function calls:

- ``attach(fn)`` once, before anything else;
- ``bar_read(bar, offset, size) -> int`` and ``bar_write(bar, offset, size,
  value)`` with ``size`` in 1/2/4/8 bytes, naturally aligned, ``offset`` in
  bytes into BAR ``bar``, little-endian values (vfio-device.md §4.2);
- ``config_gap_read(offset, size) -> int`` and ``config_gap_write(offset, size,
  value)``: config-space bytes no capability owns (vfio passes them through
  raw, vfio-device.md §5), for device registers there (ioat's CHANERR_INT);
  a chunk never crosses a dword;
- ``reset()``: power-on state of the model's registers (§3.5, §7);
- ``release()``: the device is closed for good (files closed);
- ``state() -> dict``: JSON-able registers, queues and counts for ``info``.

The model may call on ``self.fn``: ``dma_read(iova, length, pasid=None)``,
``dma_write(iova, data, pasid=None)`` (both raise DmaError), ``msix_raise(v)``,
``msi_raise(v)``, ``intx_set(level)``, ``irq_type()`` ("intx", "msi",
"msix" or None: what SET_IRQS enabled) and ``options`` (FunctionOptions).
"""


class MsixLayout:
    """Where a model puts its MSI-X table and PBA: ``vectors`` (table size),
    BAR indices and byte offsets (8-byte aligned) (vfio-device.md §13.4)."""

    def __init__(self, vectors, table_bar, table_offset, pba_bar, pba_offset):
        self.vectors = vectors
        self.table_bar, self.table_offset = table_bar, table_offset
        self.pba_bar, self.pba_offset = pba_bar, pba_offset


class Model:
    """Base class of device models; subclasses set the class attributes.

    ``bars``: six entries, BarSpec or None (the entry after a 64-bit BAR must
    be None); ``rom``: the ROM image bytes or None, ``rom_size`` the ROM BAR
    size (a power of two >= 2048, >= len(rom)); ``msi_vectors``: 0 = no MSI
    capability; ``msix``: an MsixLayout or None.
    """

    kind = "model"
    identity = None
    bars = (None,) * 6
    rom = None
    rom_size = 0
    msi_vectors = 0
    msix = None

    def __init__(self):
        self.fn = None

    def attach(self, fn):
        self.fn = fn

    def vendor_caps(self):
        """Vendor-specific capability blocks (caps.Vendor), in chain order."""
        return []

    def bar_read(self, bar, offset, size):
        return 0

    def bar_write(self, bar, offset, size, value):
        pass

    def config_gap_read(self, offset, size):
        return 0

    def config_gap_write(self, offset, size, value):
        pass

    def reset(self):
        pass

    def release(self):
        pass

    def state(self):
        return {}
