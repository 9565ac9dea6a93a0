"""One open of /dev/iommu: the object table (reference §4, "Object model").

- IDs start at 1 and the lowest free ID is reused after destroy; one ID space
  for every object type.
- An object created by an ioctl is *pending* (ID reserved, invisible to
  lookups) until the ioctl succeeds; if anything fails it is aborted and its
  ID released (the kernel's finalize/abort, reference §3 step 7).
- ``refs`` counts references held by other objects (HWPT -> IOAS, attached
  device -> HWPT, ...); IOMMU_DESTROY of a referenced object is EBUSY.
- close() destroys everything leaf-first. While a VFIO device is still bound
  to the context, the context lives on after close (the bound device file
  holds the iommufd, as in the kernel) and is destroyed when the last device
  unbinds.
"""
import errno
import heapq

from .. import uapi
from ..errors import UapiError
from ..mm.usermem import OwnerTable
from .ucmd import ioctl


class Obj:
    """Base of every iommufd object.

    ``kind``: the type name used in messages; ``id``: the object ID (u32);
    ``refs``: references held by other objects (0 = destroyable);
    ``user_destroyable``: False for objects only their owner may destroy
    (DEVICE: unbound by closing the VFIO device fd; IOMMU_DESTROY gives EBUSY).
    """

    kind = "object"
    user_destroyable = True

    def __init__(self, ctx):
        self.ctx = ctx
        self.id = 0
        self.refs = 0

    def get(self):
        self.refs += 1
        return self

    def put(self):
        assert self.refs > 0, self
        self.refs -= 1

    def destroy(self):
        """Release what the object holds (refs on others, page tables, ...).

        Called once, when refs == 0, by IOMMU_DESTROY, close() or abort.
        """

    def __repr__(self):
        return f"<{self.kind} {self.id}>"


class Context:
    """An iommufd context: the object table of one open of /dev/iommu.

    ``uid``: the uid that opened it; only that uid may use it (EACCES).
    """

    def __init__(self, emulator, uid):
        self.emulator = emulator
        self.uid = uid
        self.objects = {}        # id -> published object
        self.pending = []        # objects created by the running ioctl
        self._free = []          # heap of released IDs below _next
        self._next = 1
        self.file_open = True    # the /dev/iommu file is still open
        # Files that keep the context alive after close(), as the kernel's
        # hold a reference on the iommufd file: bound VFIO device files and
        # open fault and access fds.
        self.bound = 0
        self.returned_fds = set()  # core.fds.ReturnedFd objects of this context
        self._undo = []          # callbacks of the running ioctl, run on rollback
        self.closed = False      # everything destroyed
        self.rlimit_mm = False   # IOMMU_OPTION RLIMIT_MODE (§7)
        self.vfio_ioas = None    # IOMMU_VFIO_IOAS compat IOAS (§7)
        self.owners = OwnerTable()  # processes owning this context's mappings
        if emulator is not None:
            emulator.contexts.add(self)

    # -- IDs ------------------------------------------------------------------
    def _take_id(self):
        if self._free:
            return heapq.heappop(self._free)
        if self._next >= 1 << 31:
            raise UapiError(errno.ENOSPC, "object IDs exhausted")
        self._next += 1
        return self._next - 1

    def _release_id(self, oid):
        heapq.heappush(self._free, oid)

    def add(self, obj):
        """Reserve an ID for ``obj`` and keep it pending until the ioctl ends.

        Returns the ID. The object becomes visible when the dispatcher calls
        :meth:`commit`; it is destroyed by :meth:`rollback` on failure.
        """
        obj.id = self._take_id()
        self.pending.append(obj)
        return obj.id

    def add_published(self, obj):
        """Reserve an ID and publish at once (bind finalizes inside the call, §8)."""
        obj.id = self._take_id()
        self.objects[obj.id] = obj
        return obj.id

    def commit(self):
        for obj in self.pending:
            self.objects[obj.id] = obj
        self.pending.clear()
        self._undo.clear()

    def on_rollback(self, fn):
        """Run ``fn()`` if the running ioctl fails (before its pending
        objects are destroyed): undo what is not an object (an fd's ref)."""
        self._undo.append(fn)

    def rollback(self):
        """Abort pending objects, newest first, releasing their IDs."""
        while self._undo:
            self._undo.pop()()
        while self.pending:
            obj = self.pending.pop()
            obj.destroy()
            self._release_id(obj.id)

    # -- lookup / destroy -------------------------------------------------------
    def get(self, oid, *types):
        """The published object ``oid`` of one of ``types`` (any type if none).

        Raises UapiError(ENOENT) when absent, pending, or of another type (§4).
        """
        obj = self.objects.get(oid)
        if obj is None or (types and not isinstance(obj, types)):
            raise UapiError(errno.ENOENT, f"no object {oid} of {[t.kind for t in types]}")
        return obj

    def get_kind(self, oid, kind):
        """The published object ``oid`` whose ``kind`` is ``kind`` (a type
        name such as "DEVICE"): for a module the type's own module builds
        on, which cannot import it. ENOENT as :meth:`get`."""
        obj = self.objects.get(oid)
        if obj is None or obj.kind != kind:
            raise UapiError(errno.ENOENT, f"no object {oid} of {kind}")
        return obj

    def find(self, oid):
        """The published object ``oid`` or None."""
        return self.objects.get(oid)

    def destroy(self, oid):
        """IOMMU_DESTROY: ENOENT if absent, EBUSY if referenced (§4)."""
        obj = self.get(oid)
        if obj.refs or not obj.user_destroyable:
            raise UapiError(errno.EBUSY, f"{obj!r} has {obj.refs} users")
        self.remove(obj)

    def remove(self, obj):
        """Destroy a published object whose refs are 0 and free its ID.
        Destroying the compat IOAS also clears it (§7 IOMMU_VFIO_IOAS)."""
        assert obj.refs == 0, obj
        del self.objects[obj.id]
        if obj is self.vfio_ioas:
            self.vfio_ioas = None
        obj.destroy()
        self._release_id(obj.id)

    # -- lifetime ---------------------------------------------------------------
    def check_caller(self, caller):
        """EBADF after a synchronous close; EACCES for another uid."""
        if not self.file_open:
            raise UapiError(errno.EBADF, "context closed")
        if caller.uid != self.uid:
            raise UapiError(errno.EACCES, f"context of uid {self.uid}")

    def close(self):
        """close() of the iommufd (idempotent). Destroys everything once no
        VFIO device is bound any more."""
        self.file_open = False
        if self.bound == 0:
            self._destroy_all()

    def unbound(self):
        """A VFIO device file bound to this context unbound (close of the device fd)."""
        self.bound -= 1
        if self.bound == 0 and not self.file_open:
            self._destroy_all()

    def _destroy_all(self):
        if self.closed:
            return
        self.rollback()
        # Returned fds never opened die with the context (README).
        for f in list(self.returned_fds):
            f.close()
        # Leaf-first: destroy what nobody references, until nothing is left.
        while self.objects:
            leaves = [o for o in self.objects.values() if o.refs == 0]
            if not leaves:
                raise AssertionError(f"reference cycle in {list(self.objects.values())}")
            for obj in sorted(leaves, key=lambda o: -o.id):
                if obj.id in self.objects and obj.refs == 0:
                    self.remove(obj)
        self.closed = True
        if self.emulator is not None:
            self.emulator.contexts.discard(self)


@ioctl(uapi.IOMMU_DESTROY, "iommu_destroy", "id")
def iommu_destroy(ctx, caller, cmd):
    """IOMMU_DESTROY: ENOENT if ``id`` is absent, EBUSY while referenced (§4)."""
    ctx.destroy(cmd.id)
