"""The identity of the process behind a request (DESIGN.md, Transport).

The transport builds one :class:`Caller` per request from ``fuse_req_ctx``
(tid, uid, gid). Core reads and writes the caller's memory only through
``caller.mem`` (core.mm.usermem).
"""
import errno

from .errors import UapiError
from .files import NeedFds
from .iommufd.context import Context
from .mm.usermem import ProcessMemory, tgid_of


class Caller:
    """One request's caller.

    - ``tid``: the calling thread (fuse_req_ctx()->pid is a thread id);
    - ``uid``, ``gid``: its credentials;
    - ``mem``: :class:`core.mm.usermem.ProcessMemory` of that thread's process;
    - ``fds``: fd numbers of the caller resolved by the transport
      (VFIO_DEVICE_BIND_IOMMUFD's ``iommufd``, an access fd): a map fd ->
      the object the fd stands for (core.files.File.fget: a Context, an
      AccessFile), or fd -> errno (EBADF: not an open fd; EBADFD: not such
      a file of this mount). The server cannot resolve them itself on the
      thread that serves requests (reference fuse-notes §4, §7): with
      ``resolve`` (the transport's callers) a lookup of an fd not in ``fds``
      raises core.files.NeedFds, and the transport resolves it and calls
      again; without (unit tests), an fd not in ``fds`` is EBADF;
    - ``returned``: objects behind the fds a successful ioctl returns (a
      core.iommufd.fault.FaultFile, ...), in the order of the struct's fd fields; the
      transport publishes each as a node (docs/nodes.md, "Ioctls that return file
      descriptors").
    """

    __slots__ = ("tid", "uid", "gid", "mem", "fds", "resolve", "returned", "_tgid")

    def __init__(self, tid, uid, gid, fds=None, resolve=False):
        self.tid = tid
        self.uid = uid
        self.gid = gid
        self.mem = ProcessMemory(tid)
        self.fds = fds or {}
        self.resolve = resolve
        self.returned = []
        self._tgid = None

    @property
    def tgid(self):
        """The caller's process id (read from /proc once; ESRCH if gone)."""
        if self._tgid is None:
            self._tgid = tgid_of(self.tid)
        return self._tgid

    def fd(self, fd, file_type):
        """What the caller's fd number ``fd`` stands for, which must be a
        ``file_type`` (the transport checks it when it resolves the fd).

        Raises NeedFds while unresolved (see ``fds``); UapiError(EBADF) if
        the fd is not open in the caller, EBADFD if it is not such a file.
        """
        got = self.fds.get(fd)
        if got is None:
            if self.resolve:
                raise NeedFds([(fd, file_type)])
            got = errno.EBADF
        if isinstance(got, int):
            raise UapiError(got, f"fd {fd}")
        return got

    def iommufd(self, fd):
        """The Context behind the caller's fd number ``fd`` (reference
        §11.3, BIND): errors as :meth:`fd`."""
        return self.fd(fd, Context)
