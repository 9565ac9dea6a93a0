"""Device models behind emulated PCI functions (see core/pci/model.py)."""
