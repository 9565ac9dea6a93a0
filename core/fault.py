"""FAULT objects (IOMMU_FAULT_QUEUE_ALLOC, reference §10.1).

Only the object type exists so far: IOMMU_HWPT_ALLOC with FAULT_ID_VALID looks
fault_id up as a FAULT (ENOENT otherwise). The queue, its node and page
responses are issue 4.
"""
from .context import Obj


class Fault(Obj):
    """A fault queue object; HWPTs created with FAULT_ID_VALID hold a ref."""

    kind = "FAULT"
