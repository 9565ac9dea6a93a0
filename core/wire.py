"""The project's own frame formats (DESIGN.md, "The wire protocol" and "The
emulated device"), declared once for core, devfs, the Python client and the
tests. Little-endian. tests/c/uapi.h declares the same for C, and
tests/test_layout.py holds both against one table.

Only ``struct``: a client imports this without the cffi extensions.
"""
import struct

# -- IOFS: ioctls carried by write() and read() ---------------------------------------
IOFS_MAGIC = b"IOFS"
#: magic, cmd (the ioctl number; 0 = synchronous close), arg_len, flags (0)
IOFS_REQUEST = struct.Struct("<4sIII")
#: magic, result (>= 0 or -errno), arg_len, extra_len
IOFS_REPLY = struct.Struct("<4siII")
IOFS_HEADER_SIZE = 16
IOFS_CMD_CLOSE = 0
#: On a VFIO node, where file offsets are regions (``index << 40``), frames
#: are written and read at this offset (pwrite/pread): region index 0xF5,
#: which vfio-pci never has (the kernel answers EINVAL there).
VFIO_FRAME_OFFSET = 0xF5 << 40

# -- IODM: one DMA of an emulated device per write(), its reply on the next read() ----
IODM_MAGIC = b"IODM"
IODM_OP_READ = 1     # memory -> device: data comes back
IODM_OP_WRITE = 2    # data -> memory
IODM_FLAG_PASID = 1
IODM_FLAG_NO_PRI = 2  # fail instead of waiting for a page response
#: magic, op, flags, pasid, iova, length, reserved (0); write data follows
IODM_REQUEST = struct.Struct("<4sIIIQII")
#: magic, status (0 or -errno), moved, reserved, fault_iova; read data follows
IODM_REPLY = struct.Struct("<4siIIQ")
# A frame must fit one FUSE request (max_write / max_read 1 MiB, fuse-notes §1.2).
IODM_MAX_LENGTH = 512 * 1024

assert IOFS_REQUEST.size == IOFS_REPLY.size == IOFS_HEADER_SIZE


def iodm_announced_size(data):
    """The size of the whole IODM request whose first bytes are ``data``,
    as its header says (header plus data for a write), or None when
    ``data`` does not start with an IODM header."""
    if len(data) < IODM_REQUEST.size or data[:4] != IODM_MAGIC:
        return None
    _magic, op, _flags, _pasid, _iova, length, _rsvd = IODM_REQUEST.unpack_from(data)
    return IODM_REQUEST.size + (length if op == IODM_OP_WRITE else 0)
