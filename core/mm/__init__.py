"""Client memory: process memory access (usermem.py), IOVA space (iova.py), the pin-count model (pins.py)."""
