"""The function's MSI-X table and Pending Bit Array (vfio-device.md §13.4).

Under vfio-pci the host kernel owns the table: it programs and masks entries
as SET_IRQS binds and unbinds vectors (§6.2), and the user's BAR accesses to
the table range read 0xff and are dropped (§4.2). The PBA is read from the
function (§4.2: "PBA is not excluded"), so a masked vector that fired shows
its pending bit there until it is unmasked and delivered.
"""

ENTRY_SIZE = 16
VECTOR_MASKED = 0x1


class MsixTable:
    """Table entries (vector control only: address/data are the host's) and PBA.

    ``vectors``: table size; offsets are bytes into their BARs.
    """

    def __init__(self, cap):
        self.cap = cap
        self.vectors = cap.vectors
        self.function_mask = False
        self.enabled = False
        self.vector_masked = [True] * self.vectors    # reset value: masked (§13.4)
        self.pending = [False] * self.vectors

    def reset(self):
        """Power-on state: disabled, every vector masked, nothing pending."""
        self.function_mask = False
        self.enabled = False
        self.vector_masked = [True] * self.vectors
        self.pending = [False] * self.vectors

    def table_range(self, bar):
        """(start, end) bytes of the table in ``bar``, or None (§4.2 exclusion)."""
        if bar != self.cap.table_bar:
            return None
        start = self.cap.table_offset
        return start, start + ENTRY_SIZE * self.vectors

    def pba_range(self, bar):
        """(start, end) bytes of the PBA in ``bar``, or None: u64 words, one bit per vector."""
        if bar != self.cap.pba_bar:
            return None
        start = self.cap.pba_offset
        return start, start + 8 * ((self.vectors + 63) // 64)

    def pba_bytes(self):
        """The PBA as the function presents it (little-endian u64 words)."""
        value = sum(1 << v for v, p in enumerate(self.pending) if p)
        return value.to_bytes(8 * ((self.vectors + 63) // 64), "little")

    def masked(self, vector):
        """True when a message for ``vector`` must be held pending (§13.4)."""
        return self.function_mask or self.vector_masked[vector]
