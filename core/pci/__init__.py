"""Emulated PCI functions as vfio-pci presents them (sans-IO).

See device.PciDevice for the VFIO side, model.Model for the model side and
dma for the DMA port. Nothing here imports the rest of core except
core.errors.UapiError.
"""
from .dma import DmaError
from .device import PciDevice, RegionInfo, DeviceInfo, region_offset, split_offset
from .identity import BarSpec, FunctionOptions, Identity
from .model import Model, MsixLayout

__all__ = ["DmaError", "PciDevice", "RegionInfo", "DeviceInfo", "region_offset", "split_offset",
           "BarSpec", "FunctionOptions", "Identity", "Model", "MsixLayout"]
