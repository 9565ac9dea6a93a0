"""Numbers of the VFIO device uAPI and of PCI configuration space.

Values from vfio-device.md §1.2-§1.4 (VFIO) and §13 (PCI registers, the
offsets of linux/pci_regs.h). Only what core/pci uses is named here.
"""

# Region indices (vfio-device.md §1.2) and the file-offset encoding.
BAR0, BAR5 = 0, 5
ROM_REGION = 6
CONFIG_REGION = 7
VGA_REGION = 8
NUM_REGIONS = 9
OFFSET_SHIFT = 40          # region i lives at file offset i << 40

# region_info.flags (§1.4)
REGION_READ, REGION_WRITE, REGION_MMAP, REGION_CAPS = 1, 2, 4, 8

# device_info.flags (§1.4)
DEVICE_FLAGS_RESET, DEVICE_FLAGS_PCI = 1, 2

# IRQ indices (§1.3)
INTX, MSI, MSIX, ERR, REQ = 0, 1, 2, 3, 4
NUM_IRQS = 5

# irq_info.flags (§1.4)
IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_AUTOMASKED, IRQ_INFO_NORESIZE = 1, 2, 4, 8

# irq_set.flags (§1.4)
DATA_NONE, DATA_BOOL, DATA_EVENTFD = 1, 2, 4
DATA_TYPE_MASK = 0x07
ACTION_MASK, ACTION_UNMASK, ACTION_TRIGGER = 0x08, 0x10, 0x20
ACTION_TYPE_MASK = 0x38
IRQ_SET_HEADER = 20        # sizeof(struct vfio_irq_set) without data (§2.5)

# Type-0 header (§13.1)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG = 0x08, 0x09
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE, BIST = 0x0C, 0x0D, 0x0E, 0x0F
BAR_FIRST = 0x10
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
HEADER_SIZE = 0x40

CMD_IO, CMD_MEMORY, CMD_MASTER = 0x1, 0x2, 0x4
CMD_INTX_DISABLE = 0x400
STATUS_INTERRUPT, STATUS_CAP_LIST = 0x08, 0x10

BAR_SPACE_IO = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8
ROM_ENABLE = 0x1
ROM_ADDRESS_MASK = 0xFFFFF800

# Standard capability IDs (§13.2-§13.5, virtio-pci.md §2.1)
CAP_ID_PM, CAP_ID_MSI, CAP_ID_VNDR, CAP_ID_EXP, CAP_ID_MSIX = 0x01, 0x05, 0x09, 0x10, 0x11
# Extended capability IDs (§13.6-§13.8)
EXT_CAP_ID_ATS, EXT_CAP_ID_PRI, EXT_CAP_ID_PASID = 0x0F, 0x13, 0x1B
EXT_CAP_START = 0x100

CFG_SIZE_PCI, CFG_SIZE_PCIE = 256, 4096
