# pyg_mlic — all set-up happens here, so that a fresh machine needs only
#   make demo     # the embedded default: train every model on synthetic scenes
#   make test     # the test suite (also what .ci/run calls)
#
# The virtual environment lives outside the clone, keyed by the dependency
# spec in setup.py (lines between "deps-begin" and "deps-end") and the Python
# version, so a repeat run on the same machine reuses it; a new machine builds
# it from nothing (~10 min: torch from local disk, torch-scatter from source).

PYTHON ?= python3
SHELL := /bin/bash
DEPS_KEY := $(shell { sed -n '/deps-begin/,/deps-end/p' setup.py; $(PYTHON) -c 'import sys; print(sys.version_info[:2])'; } | sha256sum | cut -c1-16)
VENV ?= $(HOME)/.cache/pyg_mlic/venv-$(DEPS_KEY)
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.pyg_mlic-complete
# detectron2 (the owner's named supplier of proposals) is part of the environment too
DET2_STAMP := $(VENV)/.detectron2-complete
# torch-scatter is optional; set WITH_SCATTER=0 to skip the ~6 min source build.
WITH_SCATTER ?= 1
PYTEST_ARGS ?=

.PHONY: venv install demo test docs bench notebooks clean-venv print-venv detectron2

$(STAMP):
	@echo ">> building venv $(VENV)"
	rm -rf "$(VENV)"
	mkdir -p "$(dir $(VENV))"
	$(PYTHON) -m venv "$(VENV)"
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, so that torch-scatter can build against it
	$(VPY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(VPY) -m pip install -q -e ".[all]"
	if [ "$(WITH_SCATTER)" = "1" ]; then \
	  FORCE_CUDA=0 MAX_JOBS=2 $(VPY) -m pip install -q --no-build-isolation torch-scatter \
	  || echo ">> torch-scatter build failed: continuing without it (optional extra)"; \
	fi
	touch "$(STAMP)"

venv: $(STAMP) $(DET2_STAMP)

# (re)point the cached venv at this checkout: cheap, no dependency resolution
install: venv
	@$(VPY) -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
	  || $(VPY) -m pip install --no-deps --no-build-isolation -e .
	@$(VPY) -c "import pyg_mlic, sys; print('>> pyg_mlic', pyg_mlic.__version__, 'from', pyg_mlic.__file__)"

demo: install
	$(VENV)/bin/pyg-mlic demo --out runs/demo

test: install
	PYG_MLIC_DATA=$${PYG_MLIC_DATA:-$(CURDIR)/../shared/data} PYG_MLIC_REQUIRE_DETECTRON2=1 \
	  $(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

docs: install
	$(VPY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: install
	$(VPY) benchmarks/run_all.py

clean-venv:
	rm -rf "$(VENV)"

print-venv:
	@echo $(VENV)

# detectron2 from the source package pb1-detectron2 (Python sources only, no C++ ops; about
# 20 s), so that its region backend's tests run on the real coco8 images. pip >= 26 refuses
# its direct-URL metadata, so pip 25.3 downloads it; its setup.py is made to build no
# extension. Its own stamp: a venv built before this step gets it added, not rebuilt.
$(DET2_STAMP): $(STAMP)
	@echo ">> installing detectron2 (pb1-detectron2, Python sources) into $(VENV)"
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(VPY) -m pip download -q --no-deps "pip==25.3" -d "$$tmp"; \
	$(VPY) "$$tmp/pip-25.3-py3-none-any.whl/pip" download -q --no-deps --no-build-isolation "pb1-detectron2==0.6" -d "$$tmp"; \
	tar -xzf "$$tmp/pb1-detectron2-0.6.tar.gz" -C "$$tmp"; \
	sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$$tmp/pb1-detectron2-0.6/setup.py"; \
	grep -q 'ext_modules=\[\],' "$$tmp/pb1-detectron2-0.6/setup.py"; \
	$(VPY) -m pip install -q --no-deps --no-build-isolation "$$tmp/pb1-detectron2-0.6"; \
	$(VPY) -m pip install -q "fvcore==0.1.5.post20221221" "iopath>=0.1.7,<0.1.10" omegaconf cloudpickle; \
	$(VPY) -c "from pyg_mlic.detection import detectron2_available as a; assert a(), 'detectron2 does not import'"
	touch "$(DET2_STAMP)"

detectron2: $(DET2_STAMP)
