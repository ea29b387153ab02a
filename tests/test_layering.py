"""mmrec is the model library: none of its modules may import faust (only the CLI composes both)."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import mmrec


def test_no_mmrec_module_imports_faust():
    modules = [m.name for m in pkgutil.walk_packages(mmrec.__path__, "mmrec.") if m.name != "mmrec.cli"]
    assert len(modules) > 20
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(sorted(n for n in sys.modules if n.split('.')[0] in ('faust', 'mode', 'aiokafka')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
