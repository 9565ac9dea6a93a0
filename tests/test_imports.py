"""Every module of core imports on its own, first thing in a fresh process
(handler modules and the dispatch table import each other)."""
import pkgutil
import subprocess
import sys

import pytest

import core

from conftest import client_env

MODULES = sorted(f"core.{m.name}" for m in pkgutil.iter_modules(core.__path__))


@pytest.mark.parametrize("module", MODULES)
def test_core_module_imports_alone(module):
    p = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                       env=client_env())
    assert p.returncode == 0, p.stderr
