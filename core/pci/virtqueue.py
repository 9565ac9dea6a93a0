"""Split virtqueues, read and written through the function's DMA
(virtio-pci.md §6). Every address is an IOVA; a DMA failure on ring memory
and a malformed ring are :class:`VirtqError` (the transport then sets
DEVICE_NEEDS_RESET, §4.5)."""
import struct

from .dma import DmaError

DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 0x1, 0x2, 0x4
AVAIL_F_NO_INTERRUPT = 0x1
NO_VECTOR = 0xFFFF
MAX_QUEUE_SIZE = 32768          # §6.1: Q <= 32768, so no table needs more entries


class VirtqError(Exception):
    """The driver broke the ring (index out of range, loop, bad indirect
    table, readable after writable) or ring memory could not be reached."""


class Chain:
    """One descriptor chain: ``head`` index, ``readable`` and ``writable``
    lists of (IOVA, length in bytes), in order (§6.5 step 3)."""

    def __init__(self, head, readable, writable):
        self.head = head
        self.readable = readable
        self.writable = writable

    @property
    def readable_len(self):
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self):
        return sum(n for _, n in self.writable)

    @staticmethod
    def _spans(segs, offset, length):
        for addr, n in segs:
            if length <= 0:
                return
            if offset >= n:
                offset -= n
                continue
            take = min(n - offset, length)
            yield addr + offset, take
            length -= take
            offset = 0

    def read(self, fn, offset, length):
        """Gather ``length`` bytes of the readable part from byte ``offset``
        (fewer if the chain is shorter), as one DMA over the spans. Raises
        DmaError."""
        spans = list(self._spans(self.readable, offset, length))
        if len(spans) == 1 or not hasattr(fn, "dma_read_spans"):
            return b"".join(fn.dma_read(a, n) for a, n in spans)
        return fn.dma_read_spans(spans)

    def write(self, fn, offset, data):
        """Scatter ``data`` into the writable part at byte ``offset``, as one
        DMA over the spans; returns bytes written. Raises DmaError."""
        spans = list(self._spans(self.writable, offset, len(data)))
        done = sum(n for _, n in spans)
        if len(spans) == 1 or not hasattr(fn, "dma_write_spans"):
            at = 0
            for a, n in spans:
                fn.dma_write(a, data[at:at + n])
                at += n
            return done
        fn.dma_write_spans(spans, data[:done])
        return done


class SplitQueue:
    """The device side of one split virtqueue (§6.1-§6.7).

    Registers (size, addresses, vector) are written by the transport while
    the queue is disabled; ``enable()`` latches them (§3.3 queue_enable).
    """

    def __init__(self, index, max_size):
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self):
        """§4.4: disabled, size = maximum, addresses 0, vector NO_VECTOR, indices 0."""
        self.size = self.max_size
        self.enabled = False
        self.desc = self.driver = self.device = 0
        self.vector = NO_VECTOR
        self.last_avail = 0
        self.used_idx = 0
        self.chains = 0

    def enable(self):
        """Latch the configuration; a size that is 0, not a power of two or
        above the maximum makes the ring unusable (VirtqError at first use)."""
        self.enabled = True
        self.last_avail = self.used_idx = 0

    def _check_size(self):
        q = self.size
        if not q or q & (q - 1) or q > self.max_size:
            raise VirtqError(f"queue {self.index}: bad size {q}")

    def _u16(self, fn, iova):
        try:
            return struct.unpack("<H", fn.dma_read(iova, 2))[0]
        except DmaError as e:
            raise VirtqError(f"ring read at {e.iova:#x} failed: errno {e.errno}") from e

    def _put16(self, fn, iova, value):
        try:
            fn.dma_write(iova, struct.pack("<H", value & 0xFFFF))
        except DmaError as e:
            raise VirtqError(f"ring write at {e.iova:#x} failed: errno {e.errno}") from e

    def avail_idx(self, fn):
        return self._u16(fn, self.driver + 2)

    def pop(self, fn, indirect=False):
        """The next available chain, or None (§6.5 steps 1-3)."""
        self._check_size()
        idx = self.avail_idx(fn)
        pending = (idx - self.last_avail) & 0xFFFF
        if pending > self.size:
            raise VirtqError(f"avail.idx {idx} runs {pending} ahead of {self.last_avail}")
        if not pending:
            return None
        head = self._u16(fn, self.driver + 4 + 2 * (self.last_avail % self.size))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        self.chains += 1
        return self._walk(fn, head, indirect)

    def _walk(self, fn, head, indirect):
        readable, writable = [], []
        table, entries, table_bytes = self.desc, self.size, None
        i, seen = head, 0
        while True:
            if i >= entries:
                raise VirtqError(f"descriptor index {i} >= {entries}")
            seen += 1
            if seen > entries:
                raise VirtqError("descriptor chain loops")
            if table_bytes is None:
                try:
                    raw = fn.dma_read(table + 16 * i, 16)
                except DmaError as e:
                    raise VirtqError(f"descriptor read at {e.iova:#x} failed") from e
            else:
                raw = table_bytes[16 * i:16 * i + 16]
            addr, length, flags, nxt = struct.unpack("<QIHH", raw)
            if flags & DESC_F_INDIRECT:
                # §6.5: only with the feature, not inside a table, no NEXT,
                # a non-zero multiple of 16 bytes; its WRITE flag is ignored.
                if not indirect or table_bytes is not None or flags & DESC_F_NEXT \
                        or not length or length % 16 or length > 16 * MAX_QUEUE_SIZE:
                    raise VirtqError("bad indirect descriptor")
                try:
                    table_bytes = fn.dma_read(addr, length)
                except DmaError as e:
                    raise VirtqError(f"indirect table read at {e.iova:#x} failed") from e
                entries, i, seen = length // 16, 0, 0
                continue
            if flags & DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise VirtqError("readable descriptor after a writable one")
            else:
                readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                return Chain(head, readable, writable)
            i = nxt

    def push(self, fn, head, length):
        """Publish {head, length} in the used ring, then used.idx as a separate,
        final 2-byte write (§6.5 step 5, §6.8)."""
        slot = self.device + 4 + 8 * (self.used_idx % self.size)
        try:
            fn.dma_write(slot, struct.pack("<II", head, length))
        except DmaError as e:
            raise VirtqError(f"used ring write at {e.iova:#x} failed") from e
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._put16(fn, self.device + 2, self.used_idx)

    def set_avail_event(self, fn):
        """EVENT_IDX: tell the driver which avail index to kick at (§6.7)."""
        self._put16(fn, self.device + 4 + 8 * self.size, self.last_avail)

    def needs_interrupt(self, fn, old, event_idx):
        """After publishing used entries from ``old`` to ``used_idx`` (§6.7)."""
        new = self.used_idx
        if new == old:
            return False
        if event_idx:
            used_event = self._u16(fn, self.driver + 4 + 2 * self.size)
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not self._u16(fn, self.driver) & AVAIL_F_NO_INTERRUPT

    def state(self):
        return {"size": self.size, "enabled": self.enabled, "desc": self.desc, "driver": self.driver,
                "device": self.device, "msix_vector": self.vector, "last_avail": self.last_avail,
                "used_idx": self.used_idx, "chains": self.chains}
