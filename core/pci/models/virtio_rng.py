"""virtio-rng (1af4:1044): the smallest virtio device (virtio-pci.md §10).

One queue ("requestq", 64 entries), no feature bits beyond VERSION_1 and
ACCESS_PLATFORM (§5.4), no device configuration (so no DEVICE capability,
§2.2). Each chain must be device-writable only; the device fills all of it
with os.urandom bytes (at most 64 KiB per chain) and reports exactly that
many in the used element.
"""
import os

from ..virtio import VirtioPci
from ..virtqueue import VirtqError

MAX_FILL = 64 * 1024


class VirtioRng(VirtioPci):
    """virtio entropy device (virtio device ID 4)."""

    kind = "virtio-rng"
    virtio_id = 4
    class_code = 0xFF0000
    queue_sizes = (64,)

    def __init__(self):
        super().__init__()
        self.bytes_served = 0

    def handle(self, queue, chain):
        # A readable buffer is a driver error (§10); len 0 would stall Linux.
        if chain.readable or not chain.writable_len:
            raise VirtqError("virtio-rng chain must be writable only and non-empty")
        n = min(chain.writable_len, MAX_FILL)          # "MAY fill less" (§10): bounded memory
        chain.write(self.fn, 0, os.urandom(n))
        self.bytes_served += n
        return n

    def state(self):
        st = super().state()
        st["bytes_served"] = self.bytes_served
        return st
