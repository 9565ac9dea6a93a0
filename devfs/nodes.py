"""The node tree of a mount (DESIGN.md, "The wire protocol" and "The emulated device").

::

    /                         dir  0755
    /iommu                    file 0666   the iommufd (/dev/iommu)
    /vfio/devices/vfioN       file 0666   one VFIO cdev per topology device
    /devices/<name>/dma       file 0666   the device's DMA engine
    /devices/<name>/info      file 0444   the device's JSON, read as it was at
                                          open (it changes: fault counters)
    /devices/<name>/driver    file 0666   the device's driver side (PASIDs, SVA)
    /fds                      dir  0755   nodes of fds that ioctls return
    /fds/fault-N              file 0600   a fault fd (IOMMU_FAULT_QUEUE_ALLOC), owned by its uid
    /fds/access-N             file 0600   an access fd (IOMMU_TEST_CMD CREATE_ACCESS), owned by its uid

The static tree is built once from core's node table
(core.emulator.Emulator.nodes), so its inode numbers are stable for the
life of a mount (and, for a given topology, from one mount to the next):
they are assigned in a fixed order (root, iommu, vfio, vfio/devices,
devices, fds, then the vfio nodes in numeric order, then each
device's directory, dma, info and driver in name order). Nodes under ``fds/``
come and go with the objects behind them (:meth:`Tree.add_dynamic`); their
inode numbers and names are never reused within a mount. This module knows
nothing of FUSE, nor what any node is: opening one is core's (its
``target``).
"""
import stat

from core.files import Dir

ROOT_INO = 1      # FUSE_ROOT_ID


class Node:
    """One inode: ``ino``, ``name``, ``mode`` (st_mode), ``parent`` (ino),
    ``children`` (name -> Node, dirs only), ``target`` (core's node: what
    opening it asks, a core.files.Node; None for directories), ``uid``
    (owner), ``dynamic`` (under ``fds/``: the kernel must not cache it).

    st_size is 0 for every file, as in procfs: nodes are direct_io, so reads
    always reach the server and never stop at a cached size."""

    __slots__ = ("ino", "name", "mode", "parent", "children", "target", "uid", "dynamic")

    def __init__(self, ino, name, parent, target=None, mode=0o755, is_dir=False, uid=0,
                 dynamic=False):
        self.ino = ino
        self.name = name
        self.mode = (stat.S_IFDIR if is_dir else stat.S_IFREG) | mode
        self.parent = parent
        self.children = {} if is_dir else None
        self.target = target
        self.uid = uid
        self.dynamic = dynamic

    @property
    def is_dir(self):
        return self.children is not None

    def __repr__(self):
        return f"<Node {self.ino} {self.name!r}>"


class Tree:
    """All nodes of one mount, by inode number.

    ``Tree.build(emulator)`` takes core's node table (``emulator.nodes()``:
    ``[(path, core node)]`` in inode order); a core node whose ``open`` is
    a directory's (core.files.Dir) is a directory.
    """

    def __init__(self):
        self.nodes = {}
        self._next_ino = 1
        self._serial = 0
        self.fds = None

    def _add(self, name, parent, **kw):
        node = Node(self._next_ino, name, parent.ino if parent else ROOT_INO, **kw)
        self._next_ino += 1
        self.nodes[node.ino] = node
        if parent is not None:
            parent.children[name] = node
        return node

    def add_dynamic(self, target, uid):
        """A new node ``fds/<prefix>-<n>`` (n counts up per mount) for
        ``target`` (a core.fds.ReturnedFd: its ``node_kind`` is the prefix),
        owned by ``uid``. Returns the Node."""
        self._serial += 1
        return self._add(f"{target.node_kind}-{self._serial}", self.fds, target=target,
                         mode=target.mode, uid=uid, dynamic=True)

    def remove(self, node):
        """Drop a dynamic node (absent: no-op)."""
        if self.nodes.pop(node.ino, None) is not None:
            self.nodes[node.parent].children.pop(node.name, None)

    @classmethod
    def build(cls, emulator):
        """The tree for ``emulator`` (called once, with the core lock held)."""
        t = cls()
        root = t._add("", None, is_dir=True)
        by_path = {"": root}
        for path, target in emulator.nodes():
            parent_path, _, name = path.rpartition("/")
            parent = by_path[parent_path]
            if isinstance(target, Dir):
                node = t._add(name, parent, mode=target.mode, is_dir=True, dynamic=path == "fds")
            else:
                node = t._add(name, parent, target=target, mode=target.mode)
            by_path[path] = node
        t.fds = by_path["fds"]
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
