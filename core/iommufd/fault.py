"""FAULT objects: I/O page fault queues (reference §10.1, seed 004).

Seed 004's flow: the IOMMU gets a raw fault {RID, PASID, address}, finds the
I/O page table and the device from {RID, PASID} (core.iommu.routing), reports
(address space, device cookie, address) to userspace and wakes it;
userspace fixes the mapping and answers with a page response. The merged
uAPI: IOMMU_FAULT_QUEUE_ALLOC gives a FAULT object and an fd; HWPTs made with
IOMMU_HWPT_ALLOC_FAULT_ID_VALID route their faults into it.

- A :class:`FaultGroup` is one page request group: one record per page, the
  last with LAST_PAGE. Groups wait in ``pending`` until read() delivers them
  whole; delivery gives each a cookie (the lowest free number >= 1) and moves
  it to ``awaiting``, where a page response (write()) completes it.
- The fd is a :class:`FaultFile` (core.fds: the transport gives it a node
  under ``fds/``). It holds a reference on the FAULT object, so
  IOMMU_DESTROY is EBUSY while it is open (§10.1), and it keeps the context
  alive as the kernel's fault fd keeps its iommufd.
- Completing a group wakes the DMA waiting for it (core.iommu.dma): ``done`` holds
  the response code and ``wake_fd`` (an eventfd, made when someone waits)
  becomes readable. Detach, replace, and destroying the FAULT object answer
  the groups INVALID, so no DMA waits forever.
"""
import errno
import os
import struct

from .. import uapi
from ..errors import UapiError
from ..fds import FdOpen, ReturnedFd
from ..files import POLLIN, POLLOUT
from .context import Obj
from .ucmd import ioctl

RECORD = struct.Struct("<IIIIIIQII")      # struct iommu_hwpt_pgfault (40 bytes)
RESPONSE = struct.Struct("<II")           # struct iommu_hwpt_page_response (8 bytes)
assert RECORD.size == 40 and RESPONSE.size == 8

SUCCESS = uapi.IOMMU_PAGE_RESP_SUCCESS
INVALID = uapi.IOMMU_PAGE_RESP_INVALID


class FaultGroup:
    """One page request group: ``idev`` (the DEVICE the route belongs to),
    ``key`` (its attachment: None for the RID), ``pasid`` (on the wire; None
    = no PASID), ``grpid``, ``perm`` (IOMMU_PGFAULT_PERM_*), ``addrs`` (page
    addresses, IOVA), ``hwpt``; ``cookie`` once delivered; ``done`` = the
    response code once answered (None before)."""

    def __init__(self, idev, key, pasid, grpid, perm, addrs, hwpt):
        self.idev = idev
        self.key = key
        self.pasid = pasid
        self.grpid = grpid
        self.perm = perm
        self.addrs = addrs
        self.hwpt = hwpt
        self.cookie = 0
        self.done = None
        self.wake_fd = -1
        self.abandoned = False
        self.on_done = None

    def records(self):
        """The group's ``iommu_hwpt_pgfault`` records (bytes, 40 each)."""
        flags = uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID if self.pasid is not None else 0
        out = []
        last = len(self.addrs) - 1
        for i, addr in enumerate(self.addrs):
            f = flags | (uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE if i == last else 0)
            out.append(RECORD.pack(f, self.idev.id, self.pasid or 0, self.grpid, self.perm, 0,
                                   addr, 0, self.cookie))
        return b"".join(out)

    @property
    def size(self):
        return RECORD.size * len(self.addrs)

    # -- the waiting DMA ---------------------------------------------------------
    def waiter_fd(self):
        """An fd that turns readable once the group is answered (made on
        first use; readable at once if it is answered already)."""
        if self.wake_fd < 0:
            self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            if self.done is not None:
                os.eventfd_write(self.wake_fd, 1)
        return self.wake_fd

    def subscribe(self, fn):
        """Call ``fn()`` once the group is answered (core.files.Wait); True
        instead if it is answered already."""
        if self.done is not None:
            return True
        self.on_done = fn
        return False

    def complete(self, code):
        """Answer the group with ``code`` (SUCCESS/INVALID); wakes the waiter."""
        if self.done is not None:
            return
        self.done = code
        if self.wake_fd >= 0:
            os.eventfd_write(self.wake_fd, 1)
            if self.abandoned:
                self.release_fd()
        fn, self.on_done = self.on_done, None
        if fn is not None:
            fn()

    def release_fd(self):
        """The waiter is finished with the group (or gone): close the eventfd."""
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            self.wake_fd = -1

    def abandon(self):
        """The waiting DMA was cancelled: close the eventfd now if answered,
        else as soon as the group is answered."""
        self.abandoned = True
        self.on_done = None
        if self.done is not None:
            self.release_fd()


class FaultQueue(Obj):
    """The FAULT object (reference §10.1). ``pending``: groups not yet read;
    ``awaiting``: cookie -> group delivered and not yet answered;
    ``file``: its FaultFile while the fd exists (told when groups arrive,
    to wake pollers)."""

    kind = "FAULT"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pending = []
        self.awaiting = {}
        self.file = None

    # -- the IOMMU side ----------------------------------------------------------
    def report(self, group):
        """Queue a fault group (the IOMMU reporting a page request)."""
        self.pending.append(group)
        if self.file is not None:
            self.file.changed()

    def answer_all(self, match=lambda g: True, code=INVALID):
        """Answer ``code`` to every pending or delivered group ``match``
        selects (detach, replace, destroy: reference §8, §10.1)."""
        keep = []
        for g in self.pending:
            if match(g):
                g.complete(code)
            else:
                keep.append(g)
        self.pending = keep
        for cookie in [c for c, g in self.awaiting.items() if match(g)]:
            self.awaiting.pop(cookie).complete(code)

    # -- the fd side (§10.1) -----------------------------------------------------------
    def read(self, count):
        """read() of ``count`` bytes: whole groups (bytes), b"" when none is
        pending. ESPIPE ``count`` not a multiple of 40; EINVAL a group is
        pending but not even the first fits. Delivered groups get their
        cookie and wait for a response."""
        if count % RECORD.size:
            raise UapiError(errno.ESPIPE, f"read of {count} bytes: not whole records")
        if not self.pending:
            return b""
        if self.pending[0].size > count:
            raise UapiError(errno.EINVAL, f"the next group ({self.pending[0].size} bytes) does not fit")
        out = []
        used = 0
        while self.pending and used + self.pending[0].size <= count:
            g = self.pending.pop(0)
            g.cookie = self._cookie()
            self.awaiting[g.cookie] = g
            out.append(g.records())
            used += g.size
        return b"".join(out)

    def _cookie(self):
        c = 1
        while c in self.awaiting:
            c += 1
        return c

    def write(self, data):
        """write() of page responses: returns the bytes consumed. ESPIPE
        length not a multiple of 8; per record in order: EINVAL ``code``
        not SUCCESS/INVALID, EINVAL unknown cookie. A failing record stops
        the write: the bytes before it count if there are any, else its
        errno is the result. Each cookie is answered once."""
        if len(data) % RESPONSE.size:
            raise UapiError(errno.ESPIPE, f"write of {len(data)} bytes: not whole responses")
        done = 0
        for off in range(0, len(data), RESPONSE.size):
            cookie, code = RESPONSE.unpack_from(data, off)
            err = None
            if code not in (SUCCESS, INVALID):
                err = UapiError(errno.EINVAL, f"response code {code}")
            elif cookie not in self.awaiting:
                err = UapiError(errno.EINVAL, f"unknown cookie {cookie}")
            if err is not None:
                if done:
                    return done
                raise err
            self.awaiting.pop(cookie).complete(code)
            done += RESPONSE.size
        return done

    def readable(self):
        """poll(): groups wait to be read (EPOLLIN); EPOLLOUT is always set."""
        return bool(self.pending)

    def destroy(self):
        self.answer_all()


class FaultFile(ReturnedFd):
    """The fault fd of a FaultQueue (``queue``): it holds one reference on
    the queue, so IOMMU_DESTROY of the FAULT object is EBUSY while it is
    open (§10.1). Lifetime and node: core.fds.ReturnedFd."""

    node_kind = "fault"      # the transport's node kind (devfs/nodes.py)

    def __init__(self, queue, uid):
        super().__init__(queue.ctx, uid)
        self.queue = queue.get()
        queue.file = self

    def open(self, caller, flags):
        """open() of the node: EBADF closed, EACCES another uid."""
        self.check_caller(caller)
        self.opened()
        return FdOpen(self)

    def read(self, caller, count):
        """read() of the fault fd (reference §10.1): bytes of whole groups."""
        self.check_caller(caller)
        return self.queue.read(count)

    def write(self, caller, data):
        """write() of page responses (reference §10.1): bytes consumed."""
        self.check_caller(caller)
        return self.queue.write(data)

    def poll(self, closed):
        """§10.1: always writable; readable while groups wait to be read.
        EBADF (POLLERR) on an open closed synchronously."""
        if closed:
            raise UapiError(errno.EBADF, "closed synchronously")
        return POLLOUT | (POLLIN if not self.closed and self.queue.readable() else 0)

    def _close(self):
        q = self.queue
        q.file = None
        q.put()


@ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, "iommu_fault_alloc", "out_fault_fd")
def fault_queue_alloc(ctx, caller, cmd):
    """IOMMU_FAULT_QUEUE_ALLOC (§10.1): EOPNOTSUPP ``flags`` != 0. Returns
    ``out_fault_id``; the fd cannot be created in the caller, so
    ``out_fault_fd`` is -1 and the FaultFile goes to ``caller.returned``
    for the transport to publish as a node (README, "Ioctls that return file
    descriptors")."""
    if cmd.flags:
        raise UapiError(errno.EOPNOTSUPP, f"flags {cmd.flags:#x}")
    queue = FaultQueue(ctx)
    cmd.out_fault_id = ctx.add(queue)
    caller.returned.append(FaultFile(queue, caller.uid))
    cmd.out_fault_fd = 0xFFFFFFFF
