"""Python face of the C I/O page table (cext/pagetable.c).

One :class:`PageTable` per HWPT. It translates an IOVA (bytes of the
device's I/O virtual address space) to an output address (in iommufs, a
virtual address in the client process that owns the mapping), with the
accessed and dirty bits an IOMMU sets when a device does DMA.

Every failure of the C layer is raised as ``OSError(errno, message)``;
translation faults raise :class:`IOPageFault`, an ``OSError`` that also
carries the faulting IOVA in ``.iova``. Not thread-safe: one thread at a
time per table.
"""
import errno as _errno
import os
import weakref

from cext._native import ffi, lib

READ = lib.IOFS_PT_READ      # access / protection bits of the API
WRITE = lib.IOFS_PT_WRITE

# Bits of an entry, as returned by PageTable.get_ad().
PTE_PRESENT = lib.IOFS_PTE_PRESENT
PTE_READ = lib.IOFS_PTE_READ
PTE_WRITE = lib.IOFS_PTE_WRITE
PTE_ACCESSED = lib.IOFS_PTE_ACCESSED
PTE_DIRTY = lib.IOFS_PTE_DIRTY
PTE_LEAF = lib.IOFS_PTE_LEAF

_U64 = 1 << 64


class IOPageFault(OSError):
    """A translation failed: ``errno`` is EFAULT (no translation) or EACCES
    (permission missing); ``iova`` is the first IOVA that failed."""

    def __init__(self, err, iova):
        super().__init__(err, f"{os.strerror(err)} at IOVA {iova:#x}")
        self.iova = iova


def _raise(rc, what):
    raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


def live_tables():
    """Tables held by every live page table of this process (for leak tests)."""
    return lib.iofs_pt_live_tables()


class PageTable:
    """A radix I/O page table.

    ``granule``: the smallest page in bytes (a power of two, 64 B .. 1 GiB);
    ``ias_bits``: the input (IOVA) address width, so IOVAs are below
    ``1 << ias_bits``; ``bits_per_level``: log2 of entries per table;
    ``max_leaf_level``: the largest level allowed to hold a leaf (0 = granule
    pages only; with 4 KiB granule and 9 bits, 1 = 2 MiB and 2 = 1 GiB; with
    the mock's 2 KiB granule, 1 = 1 MiB). Levels are
    ``ceil((ias_bits - log2(granule)) / bits_per_level)``: 4 for 48 bits,
    5 for 57 bits with 4 KiB pages.

    Raises ``OSError(EINVAL)`` for a geometry the format cannot hold
    (more than 8 levels, max_leaf_level >= levels, ...), ``OSError(ENOMEM)``.
    """

    def __init__(self, granule=4096, ias_bits=48, max_leaf_level=2, bits_per_level=9):
        if granule <= 0 or granule & (granule - 1):
            raise OSError(_errno.EINVAL, f"granule {granule} is not a power of two")
        self.granule = granule
        self.granule_shift = granule.bit_length() - 1
        self.ias_bits = ias_bits
        self.bits_per_level = bits_per_level
        self.max_leaf_level = max_leaf_level
        try:
            pt = lib.iofs_pt_new(self.granule_shift, bits_per_level, ias_bits, max_leaf_level)
        except OverflowError:
            raise OSError(_errno.EINVAL, "page table geometry out of range") from None
        if pt == ffi.NULL:
            err = ffi.errno or _errno.ENOMEM
            raise OSError(err, f"page table {granule}/{bits_per_level}/{ias_bits}/"
                               f"{max_leaf_level}: {os.strerror(err)}")
        self._pt = pt
        self._finalizer = weakref.finalize(self, lib.iofs_pt_free, pt)
        st = self.stats()
        self.levels = st["levels"]
        self.root = lib.iofs_pt_root(pt)
        self._addr = ffi.new("uint64_t *")
        self._size = ffi.new("uint64_t *")
        self._segs = ffi.new("struct iofs_seg[]", 64)
        self._fault = ffi.new("uint64_t *")

    # -- lifetime -----------------------------------------------------------
    def close(self):
        """Free every table. Idempotent; also done when the object is collected."""
        self._finalizer()
        self._pt = None

    @property
    def closed(self):
        return self._pt is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _p(self):
        if self._pt is None:
            raise ValueError("page table is closed")
        return self._pt

    # -- mapping ------------------------------------------------------------
    def map(self, iova, addr, length, prot, huge=True):
        """Map IOVA ``[iova, iova+length)`` to ``[addr, addr+length)`` (bytes)
        with ``prot`` (READ | WRITE; 0 gives a mapping that faults EACCES).

        With ``huge``, leaves larger than the granule (up to max_leaf_level)
        are used wherever iova and addr are both aligned to them.
        Raises OSError: EINVAL (not granule-aligned, bad prot, negative),
        ERANGE (beyond ``1 << ias_bits``), EOVERFLOW (addr+length wraps),
        EEXIST (something is mapped in the range), ENOMEM. On error nothing
        changed. ``length == 0`` does nothing.
        """
        try:
            rc = lib.iofs_pt_map(self._p(), iova, addr, length, prot, 1 if huge else 0)
        except OverflowError:
            raise OSError(_errno.EINVAL, "map: argument out of range") from None
        if rc < 0:
            _raise(rc, f"map iova {iova:#x} len {length:#x}")

    def unmap(self, iova, length):
        """Remove the translations of IOVA ``[iova, iova+length)``; returns the
        bytes that were mapped there. A huge leaf crossing an end of the range
        is split so the part outside stays mapped.
        Raises OSError: EINVAL (not granule-aligned), ERANGE (beyond ias),
        ENOMEM (a split could not allocate; nothing changed).
        """
        try:
            rc = lib.iofs_pt_unmap(self._p(), iova, length)
        except OverflowError:
            raise OSError(_errno.EINVAL, "unmap: argument out of range") from None
        if rc < 0:
            _raise(rc, f"unmap iova {iova:#x} len {length:#x}")
        return rc

    def set_table_limit(self, max_tables=None):
        """Cap the number of tables (root included; None = no cap). Beyond it
        map and splitting unmap raise ENOMEM and change nothing."""
        lib.iofs_pt_set_table_limit(self._p(), _U64 - 1 if max_tables is None else max_tables)

    # -- translation --------------------------------------------------------
    def translate(self, iova, access=READ):
        """Translate the byte at ``iova`` for ``access`` (READ | WRITE).

        Returns ``(addr, leaf_size)``: the output address of that byte and the
        size in bytes of the leaf mapping it. Sets ACCESSED, and DIRTY for
        WRITE; ``access=0`` only looks up. Raises :class:`IOPageFault` with
        EFAULT (not mapped, or beyond ias) or EACCES (permission missing).
        """
        try:
            rc = lib.iofs_pt_translate(self._p(), iova, access, self._addr, self._size)
        except OverflowError:
            raise IOPageFault(_errno.EFAULT, iova) from None
        if rc < 0:
            if rc == -_errno.EINVAL:
                _raise(rc, f"translate access {access:#x}")
            raise IOPageFault(-rc, iova)
        return self._addr[0], self._size[0]

    def translate_batch(self, iovas, access=READ):
        """Translate every IOVA of the sequence ``iovas``; returns the list of
        output addresses. A/D bits are set per translation, as by
        :meth:`translate`. Raises :class:`IOPageFault` at the first failing
        IOVA (its ``done`` attribute is the list translated before it), or
        ``OSError(EINVAL)`` for bad access bits or an IOVA that is not a u64."""
        n = len(iovas)
        try:
            src = ffi.new("uint64_t[]", list(iovas))
        except OverflowError:
            raise OSError(_errno.EINVAL, "translate_batch: IOVA out of u64 range") from None
        out = ffi.new("uint64_t[]", n)
        rc = lib.iofs_pt_translate_batch(self._p(), src, n, access, out)
        if rc < 0:
            _raise(rc, f"translate_batch access {access:#x}")
        done = list(out[0:rc])
        if rc < n:
            # The C batch reports only where it stopped; the same walk gives
            # why, and (failing again) changes nothing.
            try:
                self.translate(iovas[rc], access)
            except IOPageFault as e:
                e.done = done
                raise
            raise AssertionError("translate_batch stopped on a translatable IOVA")
        return done

    def translate_range_into(self, iova, length, access, segs, max_segs=None):
        """The zero-copy DMA path: translate IOVA ``[iova, iova+length)`` into
        the caller's cffi ``struct iofs_seg[]`` ``segs`` (at most ``max_segs``
        entries, default ``len(segs)``), merging pieces whose output addresses
        are contiguous. A/D bits are set only if the whole range translates.
        Returns the number of segments written (0 for length 0).
        Raises :class:`IOPageFault` (EFAULT / EACCES, ``.iova`` = first
        failing IOVA; nothing marked), ``OSError(ENOSPC)`` if ``segs`` is too
        small (nothing marked), ``OSError(EINVAL)`` for bad access bits.
        """
        if max_segs is None:
            max_segs = len(segs)
        try:
            rc = lib.iofs_pt_translate_range(self._p(), iova, length, access, segs,
                                             max_segs, self._fault)
        except OverflowError:
            raise IOPageFault(_errno.EFAULT, iova) from None
        if rc < 0:
            if rc in (-_errno.EFAULT, -_errno.EACCES):
                raise IOPageFault(-rc, self._fault[0])
            _raise(rc, f"translate_range iova {iova:#x} len {length:#x}")
        return rc

    def translate_range(self, iova, length, access=READ):
        """As :meth:`translate_range_into`, returning a list of
        ``(addr, length)`` tuples (bytes) and growing its buffer as needed."""
        segs = self._segs
        while True:
            try:
                n = self.translate_range_into(iova, length, access, segs)
            except OSError as e:
                if e.errno != _errno.ENOSPC:
                    raise
                segs = ffi.new("struct iofs_seg[]", len(segs) * 4)
                continue
            return [(segs[i].addr, segs[i].len) for i in range(n)]

    # -- accessed / dirty ---------------------------------------------------
    def get_ad(self, iova):
        """The entry bits (PTE_PRESENT | PTE_READ | PTE_WRITE | PTE_ACCESSED |
        PTE_DIRTY | PTE_LEAF) of the leaf mapping ``iova``.
        Raises :class:`IOPageFault` (EFAULT) if not mapped."""
        flags = ffi.new("unsigned *")
        try:
            rc = lib.iofs_pt_get_ad(self._p(), iova, flags)
        except OverflowError:
            raise IOPageFault(_errno.EFAULT, iova) from None
        if rc < 0:
            raise IOPageFault(-rc, iova)
        return flags[0]

    def dirty(self, iova, length, page_size, clear=True, bitmap=None):
        """Dirty tracking over IOVA ``[iova, iova+length)``: ORs one bit per
        ``page_size`` bytes (bit 0 = ``iova``, LSB first in each byte) for
        every page a dirty leaf covers; a dirty huge leaf marks every bit it
        covers. With ``clear``, the dirty bit of each such leaf is cleared
        (for a huge leaf, the whole leaf).

        ``bitmap``: a writable buffer of at least ``ceil(length/page_size/8)``
        bytes to OR into; by default a new zeroed ``bytearray``; ``False``
        to only clear (nothing is reported). Returns the bitmap. Raises OSError: EINVAL (page_size not a power of two, iova or
        length not multiples of it, bitmap too small), ERANGE (beyond ias).
        """
        if page_size <= 0 or length < 0:
            raise OSError(_errno.EINVAL, "dirty: bad page_size or length")
        nbytes = (length // page_size + 7) // 8
        if bitmap is False:
            buf = ffi.NULL
        else:
            if bitmap is None:
                bitmap = bytearray(nbytes)
            if len(memoryview(bitmap).cast("B")) < nbytes:
                raise OSError(_errno.EINVAL, "dirty: bitmap too small")
            buf = ffi.from_buffer("uint8_t[]", bitmap, require_writable=True)
        try:
            rc = lib.iofs_pt_read_and_clear_dirty(self._p(), iova, length, page_size, buf,
                                                  1 if clear else 0)
        except OverflowError:
            raise OSError(_errno.EINVAL, "dirty: argument out of range") from None
        if rc < 0:
            _raise(rc, f"dirty iova {iova:#x} len {length:#x}")
        return bitmap

    def mark_dirty(self, iova, length):
        """Set the DIRTY bit of every leaf mapping part of IOVA ``[iova,
        iova+length)``, as a device write would (no permission check; the
        IOMMU selftest's IOMMU_TEST_OP_DIRTY). Returns the leaves marked.
        Raises OSError(ERANGE) beyond ias."""
        try:
            rc = lib.iofs_pt_mark_dirty(self._p(), iova, length)
        except OverflowError:
            raise OSError(_errno.ERANGE, "mark_dirty: argument out of range") from None
        if rc < 0:
            _raise(rc, f"mark_dirty iova {iova:#x} len {length:#x}")
        return rc

    # -- introspection ------------------------------------------------------
    def stats(self):
        """Counters and geometry: ``tables`` (root included), ``table_bytes``,
        ``leaves``, ``mapped_bytes``, ``leaves_at`` (list, per level),
        ``levels``, ``granule_shift``, ``bits_per_level``, ``ias_bits``,
        ``max_leaf_level``."""
        st = ffi.new("struct iofs_pt_stats *")
        lib.iofs_pt_stats(self._p(), st)
        return {
            "tables": st.tables,
            "table_bytes": st.table_bytes,
            "leaves": st.leaves,
            "mapped_bytes": st.mapped_bytes,
            "leaves_at": list(st.leaves_at)[: st.levels],
            "levels": st.levels,
            "granule_shift": st.granule_shift,
            "bits_per_level": st.bits_per_level,
            "ias_bits": st.ias_bits,
            "max_leaf_level": st.max_leaf_level,
        }

    @property
    def cdata(self):
        """The ``struct iofs_pt *``, for callers that use ``lib`` directly."""
        return self._p()

    def __repr__(self):
        state = "closed" if self._pt is None else f"levels={self.levels}"
        return (f"<PageTable granule={self.granule} ias_bits={self.ias_bits} "
                f"max_leaf_level={self.max_leaf_level} {state}>")
