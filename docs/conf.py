"""Sphinx configuration for pyg_mlic (build: ``make docs``)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
from pyg_mlic.version import __version__  # noqa: E402

project = "pyg_mlic"
author = "pyg_mlic developers"
release = version = __version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shapes", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
nitpicky = False
