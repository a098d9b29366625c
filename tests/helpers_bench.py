"""Import scripts of ``benchmarks/`` (not a package: they import each other by name) for
the tests of those scripts, leaving ``sys.path`` as it was."""
import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmarks(*names):
    """The modules ``benchmarks/<name>.py`` for each name, in order."""
    sys.path.insert(0, str(BENCH))
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(BENCH))
