"""What a PCI function declares about itself: IDs, BARs, platform options.

A model fills an :class:`Identity` and a list of :class:`BarSpec`; the
topology adds :class:`FunctionOptions` (PCIe or conventional, ATS/PRI/PASID,
FLR). Config space (config.py) is built from these three.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """Type-0 header identity (vfio-device.md §13.1).

    ``class_code`` is the 24-bit class/subclass/prog-if value as sysfs shows it
    (e.g. 0x010000 for mass storage). ``interrupt_pin`` 0 = no INTx, 1-4 =
    INTA-INTD; vfio reports INTx count 1 iff it is non-zero (§1.3).
    """

    vendor: int
    device: int
    class_code: int = 0xFF0000
    revision: int = 0
    subsystem_vendor: int = 0
    subsystem_id: int = 0
    interrupt_pin: int = 1


@dataclass(frozen=True)
class BarSpec:
    """One BAR: ``size`` in bytes (a power of two), I/O or memory, 32/64-bit,
    prefetchable (§13.1). A 64-bit BAR occupies its index and the next one,
    whose region reports size 0 (§1.2, §3.2)."""

    size: int
    io: bool = False
    is64: bool = False
    prefetch: bool = False

    def __post_init__(self):
        if self.size & (self.size - 1) or self.size < (4 if self.io else 16):
            raise ValueError(f"BAR size {self.size:#x} is not a power of two >= the minimum")
        if self.io and (self.is64 or self.prefetch):
            raise ValueError("an I/O BAR is neither 64-bit nor prefetchable")

    def type_bits(self):
        """The read-only low bits of the BAR register (§13.1)."""
        if self.io:
            return 0x1
        return (0x4 if self.is64 else 0) | (0x8 if self.prefetch else 0)


@dataclass(frozen=True)
class FunctionOptions:
    """Platform facts the topology gives a device (DESIGN.md "The emulated device").

    ``pcie``: a PCI Express capability and a 4096-byte config space (§13.5);
    ``ats``/``pri``: the extended capabilities, shown read-only (§5.3);
    ``pasid_bits``: > 0 gives the function a PASID capability, which the
    vfio view hides (§5.3) but which the DMA port honours;
    ``flr``: DEVCAP.FLR, so writing Initiate-FLR resets the function (§5.2);
    ``pm_no_soft_reset``: PMCSR.No_Soft_Reset; when False a D3hot->D0
    transition resets the function (§13.2, §3.5 "PM reset").
    """

    pcie: bool = True
    ats: bool = False
    pri: bool = False
    pri_capacity: int = 32
    pasid_bits: int = 0
    flr: bool = True
    pm_no_soft_reset: bool = True
