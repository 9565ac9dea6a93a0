"""The node tree of a mount (DESIGN.md, "The wire protocol" and "The emulated device").

::

    /                         dir  0755
    /iommu                    file 0666   the iommufd (/dev/iommu)
    /vfio/devices/vfioN       file 0666   one VFIO cdev per topology device
    /devices/<name>/dma       file 0666   the device's DMA engine
    /devices/<name>/info      file 0444   JSON from emulator.device_info(), read
                                          at open (it changes: fault counters)
    /devices/<name>/driver    file 0666   the device's driver side (PASIDs, SVA)
    /fds                      dir  0755   nodes of fds that ioctls return
    /fds/fault-N              file 0600   a fault fd (IOMMU_FAULT_QUEUE_ALLOC), owned by its uid
    /fds/access-N             file 0600   an access fd (IOMMU_TEST_CMD CREATE_ACCESS), owned by its uid

The static tree is built once from the emulator, so its inode numbers are
stable for the life of a mount (and, for a given topology, from one mount to
the next): they are assigned in a fixed order (root, iommu, vfio,
vfio/devices, devices, fds, then the vfio nodes in numeric order, then each
device's directory, dma, info and driver in name order). Nodes under ``fds/``
come and go with the objects behind them (:meth:`Tree.add_dynamic`); their
inode numbers and names are never reused within a mount. This module knows
nothing of FUSE.
"""
import re
import stat

# Kinds: what an open of the node becomes (devfs.server).
DIR = "dir"
IOMMU = "iommu"
VFIO = "vfio"
DMA = "dma"
INFO = "info"
DRIVER = "driver"
FAULT = "fault"
ACCESS = "access"
# The kinds of nodes under fds/, by the name core's returned objects give
# (their ``node_kind``); the name is also the node's prefix.
FD_KINDS = {FAULT: FAULT, ACCESS: ACCESS}

ROOT_INO = 1      # FUSE_ROOT_ID
IOMMU_INO = 2     # fixed: the fd resolution of BIND checks st_ino against it

_MODES = {
    DIR: stat.S_IFDIR | 0o755,
    IOMMU: stat.S_IFREG | 0o666,
    VFIO: stat.S_IFREG | 0o666,
    DMA: stat.S_IFREG | 0o666,
    INFO: stat.S_IFREG | 0o444,
    DRIVER: stat.S_IFREG | 0o666,
    FAULT: stat.S_IFREG | 0o600,
    ACCESS: stat.S_IFREG | 0o600,
}


class Node:
    """One inode: ``ino``, ``name``, ``kind`` (DIR, IOMMU, VFIO, DMA, INFO),
    ``mode`` (st_mode), ``parent`` (ino), ``children`` (name -> Node, dirs
    only), ``device`` (the emulator's device object for VFIO/DMA/INFO/DRIVER),
    ``uid`` (owner), ``obj`` (what a dynamic node stands for, e.g. a core
    FaultFile), ``dynamic`` (under ``fds/``: the kernel must not cache it).

    st_size is 0 for every file, as in procfs: nodes are direct_io, so reads
    always reach the server and never stop at a cached size."""

    __slots__ = ("ino", "name", "kind", "mode", "parent", "children", "device", "uid",
                 "obj", "dynamic")

    def __init__(self, ino, name, kind, parent, device=None, uid=0, obj=None, dynamic=False):
        self.ino = ino
        self.name = name
        self.kind = kind
        self.mode = _MODES[kind]
        self.parent = parent
        self.children = {} if kind == DIR else None
        self.device = device
        self.uid = uid
        self.obj = obj
        self.dynamic = dynamic

    @property
    def is_dir(self):
        return self.kind == DIR

    def __repr__(self):
        return f"<Node {self.ino} {self.kind} {self.name!r}>"


def _natural(name):
    # vfio2 before vfio10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Tree:
    """All nodes of one mount, by inode number.

    ``Tree.build(emulator)`` asks the emulator for ``vfio_nodes()`` (node name
    -> device). Device directories are named ``device.name``.
    """

    def __init__(self):
        self.nodes = {}
        self._next_ino = 1
        self._serial = 0
        self.fds = None

    def _add(self, name, kind, parent, **kw):
        node = Node(self._next_ino, name, kind, parent.ino if parent else ROOT_INO, **kw)
        self._next_ino += 1
        self.nodes[node.ino] = node
        if parent is not None:
            parent.children[name] = node
        return node

    def add_dynamic(self, prefix, kind, obj, uid):
        """A new node ``fds/<prefix>-<n>`` (n counts up per mount) of ``kind``
        for ``obj``, owned by ``uid``. Returns the Node."""
        self._serial += 1
        return self._add(f"{prefix}-{self._serial}", kind, self.fds, uid=uid, obj=obj, dynamic=True)

    def remove(self, node):
        """Drop a dynamic node (absent: no-op)."""
        if self.nodes.pop(node.ino, None) is not None:
            self.nodes[node.parent].children.pop(node.name, None)

    @classmethod
    def build(cls, emulator):
        """The tree for ``emulator`` (called once, with the core lock held)."""
        t = cls()
        root = t._add("", DIR, None)
        t._add("iommu", IOMMU, root)
        vfio = t._add("vfio", DIR, root)
        vdevs = t._add("devices", DIR, vfio)
        devices = t._add("devices", DIR, root)
        t.fds = t._add("fds", DIR, root, dynamic=True)
        assert t.nodes[IOMMU_INO].kind == IOMMU
        vfio_nodes = emulator.vfio_nodes()
        for name in sorted(vfio_nodes, key=_natural):
            t._add(name, VFIO, vdevs, device=vfio_nodes[name])
        by_name = {}
        for dev in vfio_nodes.values():
            by_name.setdefault(dev.name, dev)
        for name in sorted(by_name, key=_natural):
            dev = by_name[name]
            d = t._add(name, DIR, devices, device=dev)
            t._add("dma", DMA, d, device=dev)
            t._add("info", INFO, d, device=dev)
            t._add("driver", DRIVER, d, device=dev)
        return t

    def get(self, ino):
        """The node ``ino`` or None."""
        return self.nodes.get(ino)

    def lookup(self, parent_ino, name):
        """The child ``name`` (str) of directory ``parent_ino``, or None."""
        parent = self.nodes.get(parent_ino)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(name)

    def listdir(self, ino):
        """``[(name, node), ...]`` of a directory, with "." and ".." first."""
        node = self.nodes[ino]
        out = [(".", node), ("..", self.nodes[node.parent])]
        out.extend(node.children.items())
        return out

    def path(self, ino):
        """The node's path relative to the mount root ("" for the root)."""
        parts = []
        node = self.nodes[ino]
        while node.ino != ROOT_INO:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return "/".join(reversed(parts))
