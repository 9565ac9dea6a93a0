"""Frames: the write()/read() protocol of DESIGN.md ("The wire protocol").

Request (one write), little-endian::

    0   4  magic "IOFS"
    4   4  cmd       the Linux ioctl number (0 = synchronous close)
    8   4  arg_len   bytes of argument that follow
    12  4  flags     0
    16  .. argument  exactly as ioctl(fd, cmd, arg) would pass it

Reply (the next read by the same thread on the same open file)::

    0   4  magic "IOFS"
    4   4  result    i32: what ioctl() returns (>= 0) or -errno
    8   4  arg_len   bytes of argument that follow (as sent)
    12  4  extra_len bytes of extra data after the argument
    16  .. argument  as the kernel would leave it in user memory
    ..  .. extra     node paths of returned fds (none yet)

The ``dma`` nodes use the same slot rules with IODM frames, whose contents
core validates.

A request that must wait (fd resolution of VFIO_DEVICE_BIND_IOMMUFD, a core
call that blocks) does not hold its write(): the write returns at once and
the next read waits for the reply (interruptible: EINTR, the reply stays for
a later read). This matters: the kernel holds the inode lock for the whole
of a direct-I/O FUSE write (libfuse 3.14 cannot ask for parallel direct
writes), so a write left waiting would stall every writer of that node in
every process. ``read()`` takes no such lock.

Transport errors are errors of write()/read() themselves (:class:`FrameError`):
bad magic, flags or length -> EINVAL; a second request before the reply was
read -> EBUSY; read with no pending reply -> ENOMSG; read buffer smaller than
the reply -> ERANGE (the reply stays).

A frame must arrive in one FUSE WRITE. The kernel splits a direct-I/O
write() into WRITE requests of at most ``max_write`` bytes (1 MiB with
libfuse 3.14) *and* at most ``max_pages`` (256) pages of the user buffer: a
frame of ``max_write - 4096`` bytes or less always arrives whole; a longer
one may be split, depending on the buffer's alignment. A split is refused as
a bad length: the head of a split IOFS frame is shorter than its ``arg_len``
says; a write of ``max_write`` bytes or more is refused whatever it holds;
the head of a split IODM write frame is shorter than its ``length`` says
(:func:`check_dma_whole`). The write() then fails with EINVAL as a whole,
since the kernel stops at the first failed piece. Reads are split the same
way: a reply longer than ``max_read - 4096`` bytes needs a page-aligned read
buffer, else the first READ is too small for it (ERANGE).
"""
import errno
import threading

from core import wire

MAGIC = wire.IOFS_MAGIC
REQUEST = wire.IOFS_REQUEST
REPLY = wire.IOFS_REPLY
HEADER_SIZE = wire.IOFS_HEADER_SIZE
CMD_CLOSE = wire.IOFS_CMD_CLOSE


class FrameError(Exception):
    """A transport error of a frame: ``errno`` is what write()/read() fail with."""

    def __init__(self, err, detail=""):
        super().__init__(err, detail or errno.errorcode.get(err, str(err)))
        self.errno = err


def check_size(data_len, max_write):
    """EINVAL (FrameError) unless a write of ``data_len`` bytes is surely whole.

    ``max_write``: the negotiated FUSE max_write in bytes.
    """
    if data_len >= max_write:
        raise FrameError(errno.EINVAL, f"{data_len} bytes: frames must stay below max_write {max_write}")


def check_dma_whole(data, max_write):
    """EINVAL (FrameError) for an IODM frame that cannot be whole: a write of
    ``max_write`` bytes or more, or a write-op frame (op 2) with fewer data
    bytes than its ``length`` field (the head of a split write). Everything
    else about the frame is core's to judge."""
    n = len(data)
    check_size(n, max_write)
    whole = wire.iodm_announced_size(data)
    if whole is not None and n < whole:
        raise FrameError(errno.EINVAL, f"DMA frame of {n} bytes, its header says {whole}")


def parse_request(data, max_write):
    """Decode an IOFS request frame -> ``(cmd, arg_bytes)``.

    ``data``: the bytes of one WRITE. Raises FrameError(EINVAL) for a short
    header, bad magic, non-zero flags, an ``arg_len`` that is not exactly the
    bytes that follow, or a write too large to be whole (:func:`check_size`).
    """
    n = len(data)
    check_size(n, max_write)
    if n < HEADER_SIZE:
        raise FrameError(errno.EINVAL, f"{n} bytes: shorter than a frame header")
    magic, cmd, arg_len, flags = REQUEST.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(errno.EINVAL, f"bad magic {magic!r}")
    if flags != 0:
        raise FrameError(errno.EINVAL, f"flags {flags:#x}")
    if arg_len != n - HEADER_SIZE:
        raise FrameError(errno.EINVAL, f"arg_len {arg_len} but {n - HEADER_SIZE} bytes follow")
    return cmd, data[HEADER_SIZE:]


def build_reply(result, arg=b"", extra=b""):
    """Encode a reply frame: ``result`` (int, >= 0 or -errno), ``arg`` (the
    argument as left by the call), ``extra`` (bytes after it)."""
    return REPLY.pack(MAGIC, result, len(arg), len(extra)) + bytes(arg) + bytes(extra)


def build_request(cmd, arg=b"", flags=0):
    """Encode a request frame (for clients and tests)."""
    return REQUEST.pack(MAGIC, cmd, len(arg), flags) + bytes(arg)


_BUSY = object()   # the loop thread is serving this thread's write right now


class Pending:
    """A request of one thread still being served after its write() returned.
    A read that finds it parks: ``waiters`` (functions) are called by
    :meth:`wake`, on whichever thread put the reply in the slot."""

    __slots__ = ("waiters",)

    def __init__(self):
        self.waiters = []

    def wake(self):
        """The reply is in the slot: run the waiters (once)."""
        waiters, self.waiters = self.waiters, []
        for fn in waiters:
            fn()


class ReplySlots:
    """The reply slots of one open file, one per calling thread (tid).

    The protocol pairs a write with the next read *of the same thread*, so
    threads sharing an fd never see each other's replies. A slot is empty,
    busy (the write is being served), :class:`Pending` (served in the
    background after the write returned) or holds a reply. Used from the
    FUSE loop thread and from trio, hence the lock.
    """

    __slots__ = ("_slots", "_lock")

    def __init__(self):
        self._slots = {}
        self._lock = threading.Lock()

    def begin(self, tid):
        """Claim ``tid``'s slot for a new request. EBUSY (FrameError) if its
        previous reply has not been read (or its request is still running)."""
        with self._lock:
            if tid in self._slots:
                raise FrameError(errno.EBUSY, f"thread {tid} has an unread reply")
            self._slots[tid] = _BUSY

    def pend(self, tid):
        """Turn ``tid``'s claimed slot into a :class:`Pending` and return it."""
        p = Pending()
        with self._lock:
            self._slots[tid] = p
        return p

    def fill(self, tid, reply):
        """Store ``reply`` (bytes) for ``tid``'s next read. Returns the
        Pending it replaces, or None."""
        with self._lock:
            old = self._slots.get(tid)
            self._slots[tid] = reply
        return old if isinstance(old, Pending) else None

    def abort(self, tid):
        """Forget a claimed slot whose request failed as a whole (the write
        returned an error, so there is no reply to read)."""
        with self._lock:
            if self._slots.get(tid) is _BUSY:
                del self._slots[tid]

    def take(self, tid, size):
        """Pop ``tid``'s reply for a read of ``size`` bytes, or return its
        :class:`Pending` when the reply is still being made (the caller waits
        and takes again).

        ENOMSG (FrameError) if there is none; ERANGE if it is longer than
        ``size`` (the reply stays for a larger read).
        """
        with self._lock:
            reply = self._slots.get(tid)
            if reply is None or reply is _BUSY:
                raise FrameError(errno.ENOMSG, f"thread {tid} has no reply pending")
            if isinstance(reply, Pending):
                return reply
            if len(reply) > size:
                raise FrameError(errno.ERANGE, f"reply of {len(reply)} bytes, read of {size}")
            del self._slots[tid]
            return reply

    def wait(self, tid, fn):
        """Call ``fn()`` when ``tid``'s Pending is replaced by its reply
        (:meth:`Pending.wake`). False, and ``fn`` not kept, if the slot
        holds no Pending any more (take it now)."""
        with self._lock:
            p = self._slots.get(tid)
            if not isinstance(p, Pending):
                return False
            p.waiters.append(fn)
            return True

    def holds(self, tid):
        """True when ``tid`` has a request in flight or a reply to read."""
        return tid in self._slots

    def ready(self, tid):
        """True when ``tid`` has a reply to read."""
        reply = self._slots.get(tid)
        return isinstance(reply, (bytes, bytearray))

    def __len__(self):
        return len(self._slots)
