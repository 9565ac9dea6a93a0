"""Device models behind emulated PCI functions (see core/pci/model.py).

``make_model(kind, **params)`` builds one by its topology name:
``virtio-blk`` (params: ``disk`` path, ``readonly``, ``serial``),
``virtio-rng``, ``dma-engine`` and ``ioat`` (no params). Unknown kinds raise KeyError.
"""
from .dma_engine import DmaEngine
from .ioat import Ioat
from .virtio_blk import VirtioBlk
from .virtio_rng import VirtioRng


def _blk(disk, readonly=False, serial=None):
    return VirtioBlk(disk, readonly=readonly, serial=serial)


MODELS = {"virtio-blk": _blk, "virtio-rng": VirtioRng, "dma-engine": DmaEngine, "ioat": Ioat}


def make_model(kind, **params):
    """A new model of topology kind ``kind`` (see MODELS)."""
    return MODELS[kind](**params)


def identity_of(kind):
    """``(vendor, device, class_code)`` a model of ``kind`` shows in config
    space (the topology's default IDs for it). KeyError for an unknown kind."""
    if kind in ("dma-engine", "ioat"):
        i = MODELS[kind].identity
        return i.vendor, i.device, i.class_code
    cls = {"virtio-blk": VirtioBlk, "virtio-rng": VirtioRng}[kind]
    return 0x1AF4, 0x1040 + cls.virtio_id, cls.class_code
