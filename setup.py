"""Build hook: the cffi extensions are compiled by the install (cffi API mode, out of line).

Metadata lives in pyproject.toml; setuptools has no pyproject key for cffi_modules.
"""
from setuptools import setup

setup(
    cffi_modules=[
        "cext/build_native.py:ffibuilder",
        "devfs/build_fuse.py:ffibuilder",
    ],
)
