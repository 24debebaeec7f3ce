# The README's commands. `make setup` is idempotent: it reinstalls only when pyproject.toml or
# constraints.txt changed since the last install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.avgen-setup
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchaudio first, as the matched pair pinned in constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch torchaudio
	$(PY) -m pip install -q -c constraints.txt -e '.[test,slurm]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The main job. Until the joint model lands, it prepares the synthetic sounding-video dataset
# (idempotent) and writes its preview: a contact sheet and sounding mp4s.
demo: setup
	$(PY) -m avgen prepare data=synthetic_hits
	@echo "preview (contact sheet + sounding mp4s): $$(ls -d data/synthetic_hits/*/preview | head -n 1)"

bench: setup
	$(PY) benchmarks/data_throughput.py

clean-venv:
	rm -rf $(VENV)
