"""Interrupts of a vfio-pci function: GET_IRQ_INFO, SET_IRQS, delivery.

Rules from vfio-device.md §1.3 (counts), §3.3 (IRQ info), §3.4 (SET_IRQS
validation order) and §6 (semantics). Delivery is a *signal sink*: any object
with ``signal()`` (add 1 to the eventfd: an 8-byte write of 1) and
``close()`` (the server lets go of its copy of the caller's eventfd). The
transport resolves the caller's fds (pidfd_getfd) before calling
:meth:`Irqs.set_irqs`, passing ``sinks``: fd -> sink, or fd -> UapiError for
an fd that could not be taken (EBADF: not open; EINVAL: not an eventfd),
which is raised where the kernel would raise it.
"""
import errno
import struct

from ..errors import UapiError
from . import consts as C

U32_MAX = 0xFFFFFFFF
_ELEMENT_SIZE = {C.DATA_NONE: 0, C.DATA_BOOL: 1, C.DATA_EVENTFD: 4}
_NAMES = {C.INTX: "intx", C.MSI: "msi", C.MSIX: "msix", C.ERR: "err", C.REQ: "req"}


def _einval(why):
    return UapiError(errno.EINVAL, why)


class _Sinks:
    """Reference counts on sinks, so a sink bound twice is closed once, last."""

    def __init__(self):
        self._refs = {}

    def hold(self, sink):
        if sink is not None:
            self._refs[id(sink)] = (sink, self._refs.get(id(sink), (sink, 0))[1] + 1)
        return sink

    def replace(self, old, new):
        """Hold ``new`` before dropping ``old``: rebinding the same sink must not close it."""
        self.hold(new)
        self.drop(old)
        return new

    def drop(self, sink):
        if sink is None:
            return
        s, n = self._refs.pop(id(sink))
        if n > 1:
            self._refs[id(sink)] = (s, n - 1)
        else:
            s.close()


class Irqs:
    """Interrupt state of one function.

    ``cfg``: its ConfigSpace; ``msi``: the Msi block or None; ``msix``: an
    MsixTable or None; ``pcie``: ERR exists (§1.3).
    """

    def __init__(self, cfg, msi, msix, pcie):
        self.cfg, self.msi, self.msix, self.pcie = cfg, msi, msix, pcie
        self.sinks = _Sinks()
        self.type = None                 # None, C.INTX, C.MSI or C.MSIX (§6: one at a time)
        self.intx_trigger = None
        self.intx_unmask = None          # the resample eventfd of UNMASK|DATA_EVENTFD
        self.intx_masked = False
        self.virq_disabled = False       # virtual Command.INTx-Disable (§5.1, §6.1)
        self.intx_line = False
        self.vectors = []                # MSI/MSI-X: a sink or None per allocated vector
        self.msi_qmax = 0
        self.err_trigger = None
        self.req_trigger = None
        self.signalled = {name: 0 for name in _NAMES.values()}
        self.held = {"msi": 0, "msix": 0}          # masked: left pending
        self.dropped = {"intx": 0, "msi": 0, "msix": 0}

    # -- GET_IRQ_INFO (§1.3, §3.3) ------------------------------------------

    def count(self, index):
        """Interrupts of ``index`` as vfio_pci_get_irq_count reports them (§1.3)."""
        if index == C.INTX:
            return 1 if self.cfg.merged(C.INTERRUPT_PIN, 1) else 0
        if index == C.MSI:
            return self.msi.vectors if self.msi else 0
        if index == C.MSIX:
            return self.msix.vectors if self.msix else 0
        if index == C.ERR:
            return 1 if self.pcie else 0
        if index == C.REQ:
            return 1
        return 0

    def info(self, index):
        """(flags, count) of VFIO_DEVICE_GET_IRQ_INFO; EINVAL for index >= 5 or
        ERR on conventional PCI (§3.3). MSI-X is not dynamically resizable
        here, so it reports NORESIZE like MSI."""
        if not 0 <= index < C.NUM_IRQS:
            raise _einval("irq index >= VFIO_PCI_NUM_IRQS")
        if index == C.ERR and not self.pcie:
            raise _einval("ERR irq on a conventional PCI function")
        flags = C.IRQ_INFO_EVENTFD
        if index == C.INTX:
            flags |= C.IRQ_INFO_MASKABLE | C.IRQ_INFO_AUTOMASKED
        else:
            flags |= C.IRQ_INFO_NORESIZE
        return flags, self.count(index)

    # -- SET_IRQS (§3.4) ----------------------------------------------------

    def validate(self, argsz, flags, index, start, count):
        """Steps 2-5 of §3.4; returns the data size in bytes the caller must copy."""
        max_irqs = self.count(index) if 0 <= index < C.NUM_IRQS else 0
        if (argsz < C.IRQ_SET_HEADER or not 0 <= index < C.NUM_IRQS
                or count >= U32_MAX - start
                or flags & ~(C.DATA_TYPE_MASK | C.ACTION_TYPE_MASK)):
            raise _einval("vfio_irq_set header")
        if start >= max_irqs or start + count > max_irqs:
            raise _einval("start/count beyond the index's interrupts")
        size = _ELEMENT_SIZE.get(flags & C.DATA_TYPE_MASK)
        if size is None:
            raise _einval("not exactly one DATA_* flag")
        if size and argsz - C.IRQ_SET_HEADER < count * size:
            raise _einval("argsz too small for count elements")
        return count * size

    def fds_to_resolve(self, argsz, flags, index, start, count, data):
        """For the transport: the fds >= 0 of a DATA_EVENTFD call that some
        handler will look at, after the checks of §3.4 that come first
        (raises their UapiError). A failure to take one of them is not an
        error here: pass it to set_irqs as ``sinks[fd] = UapiError(...)``, so
        that earlier errnos (ENOTTY, EINVAL) keep their precedence."""
        nbytes = self.validate(argsz, flags, index, start, count)
        action = flags & C.ACTION_TYPE_MASK
        uses_fds = action == C.ACTION_TRIGGER or (index == C.INTX and action == C.ACTION_UNMASK)
        if not flags & C.DATA_EVENTFD or len(data) < nbytes or not uses_fds:
            return []
        return sorted({fd for fd in struct.unpack_from(f"<{count}i", data) if fd >= 0})

    def set_irqs(self, argsz, flags, index, start, count, data=b"", sinks=None):
        """VFIO_DEVICE_SET_IRQS after the 20-byte header was copied.

        ``data``: the bytes after the header (at least ``count`` elements);
        fewer ⇒ EFAULT, as the copy of step 6 would fail. ``sinks``: fd ->
        sink or UapiError. Returns 0; raises UapiError with the kernel's errno
        in the order of §3.4 then §6.
        """
        nbytes = self.validate(argsz, flags, index, start, count)
        if len(data) < nbytes:
            raise UapiError(errno.EFAULT, "irq_set data unreadable")
        data = bytes(data[:nbytes])
        action = flags & C.ACTION_TYPE_MASK
        handler = {
            (C.INTX, C.ACTION_MASK): self._intx_mask,
            (C.INTX, C.ACTION_UNMASK): self._intx_unmask_action,
            (C.INTX, C.ACTION_TRIGGER): self._intx_trigger,
            (C.MSI, C.ACTION_TRIGGER): self._msi_trigger,
            (C.MSIX, C.ACTION_TRIGGER): self._msi_trigger,
            (C.ERR, C.ACTION_TRIGGER): self._single_trigger,
            (C.REQ, C.ACTION_TRIGGER): self._single_trigger,
        }.get((index, action))
        if handler is None:
            raise UapiError(errno.ENOTTY, "no handler for this index/action (§3.4 step 7)")
        kind = flags & C.DATA_TYPE_MASK
        if kind == C.DATA_EVENTFD:
            values = list(struct.unpack(f"<{count}i", data))
        elif kind == C.DATA_BOOL:
            values = list(data)
        else:
            values = None
        handler(index, kind, start, count, values, sinks or {})
        return 0

    @staticmethod
    def _resolve(fd, sinks):
        sink = sinks.get(fd)
        if sink is None:
            raise UapiError(errno.EBADF, f"fd {fd} was not resolved")
        if isinstance(sink, UapiError):
            raise sink
        return sink

    # INTx (§6.1)

    def _intx_mask(self, index, kind, start, count, values, sinks):
        if self.type != C.INTX or start != 0 or count != 1:
            raise _einval("INTx mask needs INTx active, start 0, count 1")
        if kind == C.DATA_EVENTFD:
            raise UapiError(errno.ENOTTY, "INTx mask eventfd is not implemented (§6.1)")
        if kind == C.DATA_NONE or values[0]:
            self.intx_masked = True

    def _intx_unmask_action(self, index, kind, start, count, values, sinks):
        if self.type != C.INTX or start != 0 or count != 1:
            raise _einval("INTx unmask needs INTx active, start 0, count 1")
        if kind == C.DATA_EVENTFD:
            fd = values[0]
            new = self._resolve(fd, sinks) if fd >= 0 else None
            self.intx_unmask = self.sinks.replace(self.intx_unmask, new)
        elif kind == C.DATA_NONE or values[0]:
            self.intx_unmask_now()

    def _intx_trigger(self, index, kind, start, count, values, sinks):
        if self.type == C.INTX and count == 0 and kind == C.DATA_NONE:
            self._intx_disable()
            return
        if self.type not in (None, C.INTX) or start != 0 or count != 1:
            raise _einval("INTx trigger with MSI/MSI-X active, or start/count not 0/1")
        if kind == C.DATA_EVENTFD:
            fd = values[0]
            sink = self._resolve(fd, sinks) if fd >= 0 else None
            if self.type == C.INTX:
                self.intx_trigger = self.sinks.replace(self.intx_trigger, sink)
                return
            self.type = C.INTX
            self.intx_trigger = self.sinks.hold(sink)
            self.intx_masked = self.virq_disabled       # initial mask state (§6.1)
            self._intx_deliver()                        # a line already asserted fires
            return
        if self.type != C.INTX:
            raise _einval("INTx loopback trigger while INTx is not enabled")
        if kind == C.DATA_NONE or values[0]:
            # Loopback: subject to virq_disabled, not to the mask (§6.1).
            if not self.virq_disabled:
                self._signal(self.intx_trigger, "intx")

    def _intx_disable(self):
        self.sinks.drop(self.intx_trigger)
        self.sinks.drop(self.intx_unmask)
        self.intx_trigger = self.intx_unmask = None
        self.intx_masked = False
        self.type = None

    # MSI / MSI-X (§6.2)

    def _msi_trigger(self, index, kind, start, count, values, sinks):
        if self.type == index and count == 0 and kind == C.DATA_NONE:
            self._msi_disable()
            return
        if self.type not in (None, index):
            raise _einval("another interrupt type is active")
        if kind == C.DATA_EVENTFD:
            if self.type == index:
                self._msi_set_block(index, start, values, sinks)
                return
            self._msi_enable(index, start + count)
            try:
                self._msi_set_block(index, start, values, sinks)
            except UapiError:
                self._msi_disable()
                raise
            return
        if self.type != index:
            raise _einval("loopback trigger while the type is not enabled")
        for i in range(start, start + count):
            if kind == C.DATA_NONE or values[i - start]:
                if i < len(self.vectors):
                    self._signal(self.vectors[i], _NAMES[index])

    def _msi_enable(self, index, nvec):
        if nvec == 0:
            raise _einval("enable with no vectors (verify)")
        self.type = index
        self.vectors = [None] * nvec
        if index == C.MSI:
            self.msi_qmax = (2 * nvec - 1).bit_length() - 1      # ceil(log2(nvec))
        else:
            self.msix.enabled = True
            self.msix.function_mask = False
        self.sync_config()

    def _msi_set_block(self, index, start, fds, sinks):
        # Without dynamic allocation (NORESIZE) vectors past those enabled fail (§6.2).
        if start >= len(self.vectors) or start + len(fds) > len(self.vectors):
            raise _einval("vector beyond those enabled (NORESIZE)")
        for i, fd in enumerate(fds, start):
            try:
                sink = self._resolve(fd, sinks) if fd >= 0 else None
            except UapiError:
                # The kernel unwinds this call's vectors to "no trigger".
                for j in range(start, i):
                    self._bind_vector(index, j, None)
                raise
            self._bind_vector(index, i, sink)

    def _bind_vector(self, index, v, sink):
        self.vectors[v] = self.sinks.replace(self.vectors[v], sink)
        if index == C.MSIX:
            # The host requests (unmasks) a vector with a trigger and frees
            # (masks) one without; a message held while masked is delivered
            # when the vector is unmasked.
            self.msix.vector_masked[v] = sink is None
            if sink is not None and self.msix.pending[v]:
                self.msix.pending[v] = False
                self._signal(sink, "msix")

    def _msi_disable(self):
        for sink in self.vectors:
            self.sinks.drop(sink)
        if self.type == C.MSIX:
            self.msix.enabled = False
            self.msix.vector_masked = [True] * self.msix.vectors
        self.vectors = []
        self.msi_qmax = 0
        self.type = None
        self.sync_config()

    # ERR / REQ (§6.3)

    def _single_trigger(self, index, kind, start, count, values, sinks):
        if start != 0 or count > 1:
            raise _einval("ERR/REQ: start 0, count <= 1")
        attr = "err_trigger" if index == C.ERR else "req_trigger"
        current = getattr(self, attr)
        if kind == C.DATA_NONE:
            if current is None:
                raise _einval("no trigger registered")
            if count:
                self._signal(current, _NAMES[index])
            else:
                self.sinks.drop(current)
                setattr(self, attr, None)
            return
        if count == 0:
            raise _einval("ERR/REQ with data needs count 1")
        if kind == C.DATA_BOOL:
            if values[0] and current is not None:
                self._signal(current, _NAMES[index])
            return
        fd = values[0]
        if fd < -1:
            return
        sink = self._resolve(fd, sinks) if fd >= 0 else None
        setattr(self, attr, self.sinks.replace(current, sink))

    # -- delivery from the function ----------------------------------------

    def _signal(self, sink, name):
        if sink is not None:
            sink.signal()
            self.signalled[name] += 1

    def intx_set(self, level):
        """The function drives its INTx line (level-triggered, §6.1); Status
        bit 3 follows the line (§13.1)."""
        self.intx_line = bool(level)
        self.cfg.hw_set_bits(C.STATUS, 2, C.STATUS_INTERRUPT, C.STATUS_INTERRUPT if level else 0)
        if level:
            self._intx_deliver()

    def _intx_deliver(self):
        if not self.intx_line:
            return
        if self.type != C.INTX:
            self.dropped["intx"] += 1         # asserted with INTx not enabled: nobody listens
            return
        if self.intx_masked or self.virq_disabled:
            return                            # level: delivered at unmask
        self.intx_masked = True          # automask, then signal (§6.1)
        self._signal(self.intx_trigger, "intx")

    def intx_unmask_now(self):
        """UNMASK (or a signal on the unmask eventfd): a line still asserted
        re-signals at once and stays masked (§6.1). While the virtual
        INTx-Disable bit is set the line stays masked: clearing the bit
        unmasks it."""
        if self.virq_disabled:
            return
        self.intx_masked = False
        self._intx_deliver()

    def set_virq_disabled(self, disabled):
        """Command.INTx-Disable written: masks or unmasks INTx (§5.1, §6.1)."""
        if disabled == self.virq_disabled:
            return
        self.virq_disabled = disabled
        if disabled:
            self.intx_masked = True
        else:
            self.intx_unmask_now()

    def msi_raise(self, vector):
        """The function sends MSI message ``vector``: held in Pending while
        its Mask bit is set, dropped when MSI is not enabled or the vector is
        not among those enabled (§13.3, §6.2)."""
        if self.type != C.MSI or vector >= len(self.vectors):
            self.dropped["msi"] += 1
            return
        if self.msi.mask_off is not None:
            off = self.msi.offset
            if self.cfg.hw_get(off + self.msi.mask_off, 4) >> vector & 1:
                self.cfg.hw_set_bits(off + self.msi.pending_off, 4, 1 << vector, 1 << vector)
                self.held["msi"] += 1
                return
        self._signal(self.vectors[vector], "msi")

    def msi_mask_written(self):
        """Mask bits changed: deliver pending vectors that are now unmasked."""
        if self.msi is None or self.msi.mask_off is None:
            return
        off = self.msi.offset
        mask = self.cfg.hw_get(off + self.msi.mask_off, 4)
        pending = self.cfg.hw_get(off + self.msi.pending_off, 4)
        deliver = pending & ~mask
        self.cfg.hw_set_bits(off + self.msi.pending_off, 4, deliver, 0)
        for v in range(32):
            if deliver >> v & 1 and self.type == C.MSI and v < len(self.vectors):
                self._signal(self.vectors[v], "msi")

    def msix_raise(self, vector):
        """The function sends MSI-X message ``vector``: with MSI-X disabled
        it is dropped; masked (function or vector) it sets the PBA bit and is
        delivered at unmask (§13.4)."""
        if self.msix is None or not self.msix.enabled or not 0 <= vector < self.msix.vectors:
            self.dropped["msix"] += 1
            return
        if self.msix.masked(vector):
            self.msix.pending[vector] = True
            self.held["msix"] += 1
            return
        self._signal(self.vectors[vector] if vector < len(self.vectors) else None, "msix")

    def set_msix_function_mask(self, masked):
        """The host sets or clears MSI-X Function Mask (§13.4); clearing it
        delivers the vectors left pending and unmasked."""
        self.msix.function_mask = masked
        self.sync_config()
        if not masked:
            for v in range(min(len(self.vectors), self.msix.vectors)):
                if self.msix.pending[v] and not self.msix.masked(v):
                    self.msix.pending[v] = False
                    self._signal(self.vectors[v], "msix")

    # -- lifecycle ------------------------------------------------------------

    def sync_config(self):
        """Mirror the host-controlled MSI-X Enable/Function Mask into the
        function's capability bytes (read-only to the user, §5.2)."""
        if self.msix is not None:
            ctl = (0x8000 if self.msix.enabled else 0) | (0x4000 if self.msix.function_mask else 0)
            self.cfg.hw_set_bits(self.msix.cap.offset + 2, 2, 0xC000, ctl)

    def device_reset(self):
        """The function was reset: its line drops and nothing stays pending;
        vfio's bindings (triggers, masks) are untouched by VFIO_DEVICE_RESET (§3.5)."""
        self.intx_line = False
        if self.msix is not None:
            self.msix.pending = [False] * self.msix.vectors
        self.sync_config()

    def release(self):
        """Close of the device: disable the active type, clear ERR/REQ, close every sink (§6.4)."""
        if self.type == C.INTX:
            self._intx_disable()
        elif self.type in (C.MSI, C.MSIX):
            self._msi_disable()
        for attr in ("err_trigger", "req_trigger"):
            self.sinks.drop(getattr(self, attr))
            setattr(self, attr, None)

    def state(self):
        """Counters and state for ``info``."""
        return {
            "type": _NAMES.get(self.type),
            "intx": {"line": self.intx_line, "masked": self.intx_masked,
                     "virq_disabled": self.virq_disabled, "trigger": self.intx_trigger is not None},
            "vectors_enabled": len(self.vectors),
            "vectors_bound": sum(s is not None for s in self.vectors),
            "signalled": dict(self.signalled),
            "held_pending": dict(self.held),
            "dropped": dict(self.dropped),
        }
