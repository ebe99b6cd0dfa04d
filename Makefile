# Two commands do everything on a fresh machine: `make train` and `make test`.
# The first call creates .venv, installs PyTorch first (override TORCH_SPEC for your CUDA
# build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"),
# then this package with its extras, and checks pip did not swap the torch build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: train test install clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -c "import torch; open('$(VENV)/.torch_version', 'w').write(torch.__version__)"
	$(PY) -m pip install -q -e ".[test,sweep]"
	@$(PY) -c "import torch, sys; want = open('$(VENV)/.torch_version').read(); \
	  sys.exit(0 if torch.__version__ == want else f'pip replaced torch {want} with {torch.__version__}')"
	@touch $@

train: install  ## the main job on the embedded dataset (override with ARGS="model=... data=...")
	$(PY) run.py $(ARGS)

test: install  ## the full non-GPU test suite
	$(PY) -m pytest -q $(ARGS)

clean:  # caches only: runs under logs/ are results, kept (delete them by hand)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
