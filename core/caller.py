"""The identity of the process behind a request (DESIGN.md, Transport).

The transport builds one :class:`Caller` per request from ``fuse_req_ctx``
(tid, uid, gid). Core reads and writes the caller's memory only through
``caller.mem`` (core.usermem).
"""
import errno

from .errors import UapiError
from .usermem import ProcessMemory, tgid_of


class Caller:
    """One request's caller.

    - ``tid``: the calling thread (fuse_req_ctx()->pid is a thread id);
    - ``uid``, ``gid``: its credentials;
    - ``mem``: :class:`core.usermem.ProcessMemory` of that thread's process;
    - ``fds``: fd numbers of the caller resolved by the transport before the
      request reached core (VFIO_DEVICE_BIND_IOMMUFD's ``iommufd``): a map
      fd -> Context, or fd -> errno (EBADF: not an open fd; EBADFD: not an
      iommufs /dev/iommu of this mount). The server cannot resolve them itself
      on the thread that serves requests (reference fuse-notes §4, §7);
    - ``returned``: objects behind the fds a successful ioctl returns (a
      core.fault.FaultFile, ...), in the order of the struct's fd fields; the
      transport publishes each as a node (README, "Ioctls that return file
      descriptors").
    """

    __slots__ = ("tid", "uid", "gid", "mem", "fds", "returned", "_tgid")

    def __init__(self, tid, uid, gid, fds=None):
        self.tid = tid
        self.uid = uid
        self.gid = gid
        self.mem = ProcessMemory(tid)
        self.fds = fds or {}
        self.returned = []
        self._tgid = None

    @property
    def tgid(self):
        """The caller's process id (read from /proc once; ESRCH if gone)."""
        if self._tgid is None:
            self._tgid = tgid_of(self.tid)
        return self._tgid

    def iommufd(self, fd):
        """The Context behind the caller's fd number ``fd``.

        Raises UapiError(EBADF) if the fd is not open in the caller, EBADFD if
        it is not an iommufs /dev/iommu (reference §11.3, BIND).
        """
        got = self.fds.get(fd, errno.EBADF)
        if isinstance(got, int):
            raise UapiError(got, f"fd {fd}")
        return got
