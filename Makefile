# The two commands of the README. Both create .venv if missing and install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch, for the timm/smp parity tests; torchvision pinned to
# the release that pins that torch (pip would otherwise pull CUDA wheels).
TORCH_PINS := torch==2.13.0 torchvision==0.28.0

.PHONY: install install-test demo test test-quick study clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[tensorboard,matting]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	printf '%s\n' $(TORCH_PINS) > $(VENV)/torch-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraints.txt -e ".[test,torch,report,serve,video,onnx,beam]" $(TORCH_PINS)
	# jax2onnx without its dependencies: its orbax pin is not needed (pyproject.toml, onnx).
	$(PY) -m pip install -q --no-deps jax2onnx==0.17.1
	$(PY) .ci/patch_torchvision.py
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m bgmat.cli demo --out demo_out

# Two pytest-xdist workers (the suite compiles single-threaded; the workers
# share one locked compilation cache, tests/conftest.py); a test file stays on
# one worker, so its module fixtures are built once. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
TEST_ARGS = -n $(TEST_WORKERS) --dist loadfile

test: install-test
	$(PY) -m pytest -q $(TEST_ARGS) tests

# Everything except the tests that train models (`slow`, tests/conftest.py).
test-quick: install-test
	$(PY) -m pytest -q $(TEST_ARGS) -m 'not slow' tests

# The real-portrait study (README "The study"): data from DATA (never
# committed), both stages in their variants and seeds, baselines, peer, report.
# Everything it writes goes under STUDY (git-ignored). Resumable: finished runs
# are kept, an interrupted one resumes from its last checkpoint.
DATA ?= ../shared/data
STUDY ?= runs/study
SEEDS ?= 0 1
# Optional: the python of a venv with bench/requirements-mediapipe.txt (the peer).
MEDIAPIPE_PYTHON ?=
# Optional: more bgmat.study arguments, e.g. a recipe's config overrides
# (STUDY_ARGS='--matting_override num_train_steps=2400 loss.grad_unknown=1.0').
STUDY_ARGS ?=
study: install
	$(PY) -m bgmat.study --data $(DATA) --study $(STUDY) --seeds $(SEEDS) \
	    $(if $(MEDIAPIPE_PYTHON),--mediapipe_python $(MEDIAPIPE_PYTHON)) $(STUDY_ARGS)

clean:
	rm -rf demo_out .pytest_cache
