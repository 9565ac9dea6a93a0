"""Client memory: process memory access (usermem.py), the free IOVA space
(iova.py), the pin-count model (pins.py)."""
