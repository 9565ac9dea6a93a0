"""The facade the transport drives: one :class:`Emulator` per mount.

The transport (devfs) builds its tree from :meth:`Emulator.nodes`, opens
nodes with :meth:`Emulator.open` and then speaks the file protocol
(core.files) to what it returned, with the core lock held, one thread at a
time. Every call returns its result or raises core.errors.UapiError (or
core's typed "not yet", core.files.NotYet); nothing here does FUSE or trio
I/O.
"""
import errno
import os
import re
from functools import partial

from .devices import LiveDevice
from .errors import UapiError
from .files import Dir, InfoFile, Opener
from .iommu.dma import DmaPort
from .iommu.driver import DriverFile
from .iommu.pasid import PasidSpace
from .iommu.sva import SvaTable
from .iommufd.context import Context
from .iommufd.dispatch import IommufdFile
from .topology import Topology
from .vfio.cdev import VfioFile
from .vfio.group import GroupFile


def _natural(name):
    # vfio2 before vfio10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Watch:
    """An fd core waits on (``fd``) and what to do when it is readable (``fn``)."""

    __slots__ = ("fd", "fn")

    def __init__(self, fd, fn):
        self.fd = fd
        self.fn = fn


class Emulator:
    """All emulated state of one mount: its live devices, contexts, watches.

    ``topology``: a :class:`core.topology.Topology` (the built-in one when None).
    """

    def __init__(self, topology=None):
        self.topology = topology or Topology.builtin()
        # The devices at run time (core.devices), by name; by RID and group as
        # routing and DMA ownership see them (the selftest adds its mocks).
        self.devices = {d.name: LiveDevice(d) for d in self.topology.devices}
        self.by_rid = {rid: [self.devices[d.name] for d in ds]
                       for rid, ds in self.topology.by_rid.items()}
        self.groups = {g: [self.devices[d.name] for d in ds]
                       for g, ds in self.topology.groups.items()}
        # The system-wide PASID space (ENQCMD devices, their SVA bonds; seed 003).
        self.global_pasids = PasidSpace(self.topology.iommu.pasid_bits, "global")
        self.sva = SvaTable(self)
        self.contexts = set()    # core.iommufd.context.Context not yet destroyed (they add themselves)
        self.watches = {}        # fd -> Watch
        self.watch_gen = 0
        # IOMMU_TEST_CMD SET_TEMP_MEMORY_LIMIT (core.iommufd.selftest): global, as in the kernel.
        self.test_memory_limit = 65536
        self.open_groups = set()   # numbers of the groups whose vfio/N node is open (§10)

    # -- fds core wants to hear about -------------------------------------------
    def watch(self, fd, fn):
        """Core asks the transport: call ``fn()`` (with the core lock held)
        once ``fd`` becomes readable (a pidfd: the process exited). Replaces
        an earlier watch of the same fd. The transport follows ``watches``
        whenever ``watch_gen`` changes."""
        self.watches[fd] = Watch(fd, fn)
        self.watch_gen += 1

    def unwatch(self, fd):
        """Forget the watch of ``fd`` (the fd is about to be closed)."""
        if self.watches.pop(fd, None) is not None:
            self.watch_gen += 1

    def fire_watch(self, w):
        """The transport saw the Watch ``w``'s fd readable: drop it and run
        its function (no-op if it was unwatched or replaced meanwhile)."""
        if self.watches.get(w.fd) is w:
            del self.watches[w.fd]
            self.watch_gen += 1
            w.fn()

    # -- the node table -------------------------------------------------------
    def nodes(self):
        """The static nodes of a mount, in the order their inode numbers are
        given: ``[(path, core.files.Node), ...]`` (paths relative to the
        root, directories before what they hold). Nodes of returned fds
        (``fds/<prefix>-N``) come and go with their objects
        (core.fds.ReturnedFd)."""
        out = [("iommu", Opener(self._open_iommufd, Context)),
               ("vfio", Dir()), ("vfio/devices", Dir()), ("devices", Dir()), ("fds", Dir())]
        vfio = sorted(self.devices.values(), key=lambda d: _natural(d.vfio))
        out += [(f"vfio/devices/{d.vfio}", Opener(partial(self._open_vfio, d), VfioFile))
                for d in vfio]
        for d in sorted(self.devices.values(), key=lambda d: _natural(d.name)):
            out += [(f"devices/{d.name}", Dir()),
                    (f"devices/{d.name}/dma", Opener(partial(self._open_dma, d), DmaPort)),
                    (f"devices/{d.name}/info", Opener(partial(self._open_info, d), InfoFile, 0o444)),
                    (f"devices/{d.name}/driver",
                     Opener(partial(self._open_driver, d), DriverFile))]
        # The legacy API (vfio-device.md §10): the container, an iommufd
        # (CONFIG_IOMMUFD_VFIO_CONTAINER), and one node per IOMMU group.
        # Last, so the inode numbers of the nodes above do not move.
        out += [("vfio/vfio", Opener(self._open_iommufd, Context))]
        out += [(f"vfio/{g}", Opener(partial(self._open_group, g), GroupFile))
                for g in sorted(self.groups)]
        return out

    def node(self, path):
        """The node at ``path`` of :meth:`nodes` (KeyError if none): for
        tests and tools that open nodes without a mount."""
        return dict(self.nodes())[path]

    def open(self, node, caller, flags=os.O_RDWR):
        """open() of ``node`` (a core.files.Node) by ``caller`` with open
        ``flags``: its new core.files.File, or UapiError (the node's rules:
        EACCES ``info`` opened for writing; a returned fd's node: EACCES
        another uid, ENOENT or EBADF once the fd is closed)."""
        return node.open(caller, flags)

    def _open_iommufd(self, caller, flags):
        # A new, empty Context owned by caller.uid.
        return IommufdFile(Context(self, caller.uid))

    def _open_vfio(self, device, caller, flags):
        # Unbound until VFIO_DEVICE_BIND_IOMMUFD.
        return VfioFile(self, device, caller.uid)

    def _open_group(self, number, caller, flags):
        # One open at a time, and not while a device of it is bound through
        # its cdev (vfio-device.md §10: EBUSY).
        if number in self.open_groups:
            raise UapiError(errno.EBUSY, f"group {number} is open")
        for d in self.groups[number]:
            if d.bound is not None and not getattr(d.bound, "group_obtained", False):
                raise UapiError(errno.EBUSY, f"{d.name} is bound through its cdev")
        self.open_groups.add(number)
        return GroupFile(self, number, caller.uid)

    def _open_driver(self, device, caller, flags):
        return DriverFile(self, device, caller.uid)

    def _open_dma(self, device, caller, flags):
        return DmaPort(self, device)

    def _open_info(self, device, caller, flags):
        # Root would pass the kernel's mode check: refuse writers here.
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise UapiError(errno.EACCES, "info is read-only")
        return InfoFile(device.info_json())

    def shutdown(self):
        """Unmount: close every context still open (releases pidfds)."""
        for ctx in list(self.contexts):
            ctx.close()
        for d in self.devices.values():
            d.shutdown()
        self.watches.clear()
        self.watch_gen += 1

