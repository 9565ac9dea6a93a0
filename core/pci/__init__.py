"""Emulated PCI functions as vfio-pci presents them (sans-IO).

How a VFIO device handler uses a :class:`PciDevice` (vfio-device.md §3, §4):

- VFIO_DEVICE_GET_INFO: ``device_info()`` -> DeviceInfo(flags, num_regions,
  num_irqs);
- VFIO_DEVICE_GET_REGION_INFO: ``region_info(index)`` -> RegionInfo(flags,
  size, offset) or UapiError(EINVAL); the handler does argsz/caps (none);
- pread/pwrite on the node: ``pread(offset, size) -> bytes`` and
  ``pwrite(offset, data) -> int`` (or ``region_read(index, pos, size)`` /
  ``region_write(index, pos, data)``); a short result is a short transfer;
- VFIO_DEVICE_GET_IRQ_INFO: ``irq_info(index)`` -> (flags, count);
- VFIO_DEVICE_SET_IRQS: ``set_irqs_fds(flags, index, start, count, data,
  argsz=)`` lists the caller's fds to take with pidfd_getfd (raising the
  errors the kernel raises before it reads them), then ``set_irqs(flags,
  index, start, count, data, sinks={fd: sink or UapiError}, argsz=)``. A
  sink has ``signal()`` (write 1 to the eventfd) and ``close()``; the
  device closes each sink when no vector uses it any more. A signal on an
  INTx unmask eventfd is reported with ``intx_resample()``;
- VFIO_DEVICE_RESET: ``reset()``; the last close of the node: ``release()``;
- ``info``: ``state()``, a JSON-able dict.

Models (core/pci/models: ``make_model(kind, **params)``) reach memory only
through the DMA port given to PciDevice (dma.py: ``read(iova, length,
pasid=None)``, ``write(iova, data, pasid=None)``, raising DmaError).

Nothing here imports the rest of core except core.errors.UapiError.
"""
from .dma import DmaError
from .device import PciDevice, RegionInfo, DeviceInfo, region_offset, split_offset
from .identity import BarSpec, FunctionOptions, Identity
from .model import Model, MsixLayout

__all__ = ["DmaError", "PciDevice", "RegionInfo", "DeviceInfo", "region_offset", "split_offset",
           "BarSpec", "FunctionOptions", "Identity", "Model", "MsixLayout"]
