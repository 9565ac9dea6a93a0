"""virtio-blk (1af4:1042) backed by a disk image file (virtio-pci.md §9).

Offered features (§5.4, §9.6): SEG_MAX (queue size - 2), BLK_SIZE (512),
FLUSH, RO for a read-only image, INDIRECT_DESC, EVENT_IDX, VERSION_1,
ACCESS_PLATFORM. SIZE_MAX is not offered (optional in §5.3), so size_max
reads 0. One request queue of 256 entries; the full 96-byte configuration
is exposed (§9.1).

Requests (§9.3-§9.6): IN, OUT, FLUSH (os.fsync of the image), GET_ID (the
serial, 20 bytes NUL-padded); anything else UNSUPP. OUT to a read-only
image, a length not a multiple of 512, a range past the capacity, an image
I/O error or a DMA fault on a data buffer give IOERR. A chain without a
16-byte header or a status byte cannot be failed and sets NEEDS_RESET. When
FLUSH was not negotiated, each OUT is made durable before it completes.
"""
import os
import struct

from ..dma import DmaError
from ..virtio import F_ACCESS_PLATFORM, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, VirtioPci
from ..virtqueue import VirtqError

F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 2, 5, 6, 9
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
SECTOR = 512
ID_BYTES = 20
CONFIG_LEN = 0x60
QUEUE_SIZE = 256
CHUNK = 1 << 20                 # bytes moved per DMA: a request never holds more in memory


class VirtioBlk(VirtioPci):
    """virtio block device (virtio device ID 2) on the image at ``path``.

    ``readonly`` offers VIRTIO_BLK_F_RO; ``serial`` is the GET_ID string
    (default: the image's file name), truncated to 20 bytes.
    """

    kind = "virtio-blk"
    virtio_id = 2
    class_code = 0x010000
    queue_sizes = (QUEUE_SIZE,)
    device_config_len = CONFIG_LEN

    def __init__(self, path, readonly=False, serial=None):
        self.features = ((1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH) | (1 << F_INDIRECT_DESC)
                         | (1 << F_EVENT_IDX) | (1 << F_VERSION_1) | (1 << F_ACCESS_PLATFORM)
                         | ((1 << F_RO) if readonly else 0))
        super().__init__()
        self.path = path
        self.readonly = readonly
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.capacity = os.fstat(self.fd).st_size // SECTOR
        self.serial = (serial if serial is not None else os.path.basename(path)).encode()[:ID_BYTES]
        self.counts = {"in": 0, "out": 0, "flush": 0, "get_id": 0, "unsupp": 0, "ioerr": 0,
                       "bytes_read": 0, "bytes_written": 0}

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def config_bytes(self):
        """struct virtio_blk_config (§9.1): capacity, seg_max, blk_size; the rest 0."""
        cfg = bytearray(CONFIG_LEN)
        struct.pack_into("<Q", cfg, 0x00, self.capacity)
        struct.pack_into("<I", cfg, 0x0C, QUEUE_SIZE - 2)
        struct.pack_into("<I", cfg, 0x14, SECTOR)
        return bytes(cfg)

    def handle(self, queue, chain):
        if chain.readable_len < 16 or chain.writable_len < 1:
            raise VirtqError("virtio-blk request without header or status byte (§9.6)")
        try:
            rtype, _, sector = struct.unpack("<IIQ", chain.read(self.fn, 0, 16))
        except DmaError:
            raise VirtqError("request header unreadable")
        data_len = chain.writable_len - 1             # IN / GET_ID data area
        status, written = self._execute(chain, rtype, sector, data_len)
        if status == S_IOERR:
            self.counts["ioerr"] += 1
        elif status == S_UNSUPP:
            self.counts["unsupp"] += 1
        try:
            chain.write(self.fn, chain.writable_len - 1, bytes([status]))
        except DmaError:
            raise VirtqError("status byte unwritable")
        return written + 1

    def _execute(self, chain, rtype, sector, data_len):
        """(status, data bytes written into the writable part)."""
        try:
            if rtype == T_IN:
                return self._read(chain, sector, data_len)
            if rtype == T_OUT:
                return self._write(chain, sector, chain.readable_len - 16), 0
            if rtype == T_FLUSH:
                self.counts["flush"] += 1
                os.fsync(self.fd)
                return S_OK, 0
            if rtype == T_GET_ID:
                self.counts["get_id"] += 1
                ident = self.serial.ljust(ID_BYTES, b"\0")[:min(ID_BYTES, data_len)]
                return S_OK, chain.write(self.fn, 0, ident)
        except (DmaError, OSError):
            return S_IOERR, 0
        return S_UNSUPP, 0

    def _range_ok(self, sector, length):
        return length % SECTOR == 0 and sector + length // SECTOR <= self.capacity

    def _read(self, chain, sector, length):
        if not self._range_ok(sector, length):
            return S_IOERR, 0
        self.counts["in"] += 1
        for done in range(0, length, CHUNK):
            data = os.pread(self.fd, min(CHUNK, length - done), sector * SECTOR + done)
            if len(data) != min(CHUNK, length - done):
                return S_IOERR, done
            chain.write(self.fn, done, data)
        self.counts["bytes_read"] += length
        return S_OK, length

    def _write(self, chain, sector, length):
        if self.readonly or not self._range_ok(sector, length):
            return S_IOERR
        self.counts["out"] += 1
        for done in range(0, length, CHUNK):
            data = chain.read(self.fn, 16 + done, min(CHUNK, length - done))
            if os.pwrite(self.fd, data, sector * SECTOR + done) != len(data):
                return S_IOERR
        if not self.has(F_FLUSH):
            os.fsync(self.fd)                         # writethrough without FLUSH (§9.6)
        self.counts["bytes_written"] += length
        return S_OK

    def state(self):
        st = super().state()
        st.update({"image": self.path, "readonly": self.readonly, "capacity_sectors": self.capacity,
                   "requests": dict(self.counts)})
        return st
