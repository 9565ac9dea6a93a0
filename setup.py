"""Build hooks: the cffi extensions and the preload shim are compiled by the install.

Metadata lives in pyproject.toml; setuptools has no pyproject key for
cffi_modules. The shim (cext/preload.c) is a plain shared library, not an
extension: build_ext compiles it with the C compiler beside the package's
other files (cext/build_preload.py), in place for editable installs.
"""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _preload_builder():
    spec = importlib.util.spec_from_file_location(
        "build_preload", os.path.join(HERE, "cext", "build_preload.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildExtAndPreload(build_ext):
    """build_ext, then libiommufs-preload.so into the cext package."""

    def run(self):
        super().run()
        builder = _preload_builder()
        if self.inplace:
            out_dir = self.get_finalized_command("build_py").get_package_dir("cext")
        else:
            out_dir = os.path.join(self.build_lib, "cext")
        os.makedirs(out_dir, exist_ok=True)
        self._preload = builder.build(out_dir)

    def get_outputs(self):
        out = super().get_outputs()
        preload = getattr(self, "_preload", None)
        return out + [preload] if preload else out


setup(
    cmdclass={"build_ext": BuildExtAndPreload},
    cffi_modules=[
        "cext/build_native.py:ffibuilder",
        "devfs/build_fuse.py:ffibuilder",
    ],
)
