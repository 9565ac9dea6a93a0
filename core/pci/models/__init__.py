"""Device models behind emulated PCI functions (see core/pci/model.py).

``make_model(kind, **params)`` builds one by its topology name:
``virtio-blk`` (params: ``disk`` path, ``readonly``, ``serial``),
``virtio-rng`` and ``dma-engine`` (no params). Unknown kinds raise KeyError.
"""
from .dma_engine import DmaEngine
from .virtio_blk import VirtioBlk
from .virtio_rng import VirtioRng


def _blk(disk, readonly=False, serial=None):
    return VirtioBlk(disk, readonly=readonly, serial=serial)


MODELS = {"virtio-blk": _blk, "virtio-rng": VirtioRng, "dma-engine": DmaEngine}


def make_model(kind, **params):
    """A new model of topology kind ``kind`` (see MODELS)."""
    return MODELS[kind](**params)
