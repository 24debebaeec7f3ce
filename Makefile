# The README's commands. `make setup` is idempotent: it reinstalls only when pyproject.toml or
# constraints.txt changed since the last install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.avgen-setup
PYTEST_ARGS ?=
# pytest-xdist: three worker processes on the 2-core machines (with two, a fifth of the CPU time sat idle while tests
# waited on subprocesses, SLURM jobs and the browser); --dist loadscope keeps each test module on one worker, so a
# module's fixtures (a SLURM cluster, a trained checkpoint) are made once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 3
XDIST = -n $(TEST_WORKERS) --dist loadscope

.PHONY: setup test test-fast lint demo bench clean-venv gpu-wheels gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchaudio first, as the matched pair pinned in constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch torchaudio
	$(PY) -m pip install -q -c constraints.txt -e '.[test,slurm,app]'
	# compile librosa's numba kernels into numba's disk cache once (about 30 s), not in every process that first
	# needs one: on an empty cache each process pays about 23 s of CPU (avgen/metrics/jit_cache.py)
	$(PY) -m avgen.metrics.jit_cache
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# lint + import order (ruff; settings in pyproject.toml); CI runs it before the tests
lint: setup
	$(PY) -m ruff check avgen tests

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The main job: the joint audio+video model at scale=mini (the mini twins: codecs and base generators avgen trained on
# the synthetic hits; CPU): its connectors and CMC-PE blocks train from zero-init for DEMO_STEPS steps (lr 1e-3: the
# paper's 1e-5 is for 1000 epochs of batch 16) with the pretrained motion modules frozen (at that rate they drift: held-out
# video loss 0.0178 trained vs 0.0147 frozen), then it samples DEMO_SAMPLES sounding videos, scores their AV-Align,
# checks whether the model learned (benchmarks/mini_demo.py) and exports the model.
# Re-running continues the same run folder (resume=auto).
DEMO_DIR ?= runs/demo
DEMO_STEPS ?= 300
DEMO_SAMPLES ?= 32
demo: setup
	$(PY) -m avgen fit experiment=joint_cmcpe scale=mini trainer.max_steps=$(DEMO_STEPS) model.optimizer.lr=1e-3 \
		model.train_motion_modules=false trainer.check_val_every_n_epoch=1000 model.validation.samples=0 \
		hydra.run.dir=$(DEMO_DIR)/fit
	$(PY) -m avgen sample ckpt_path=$(DEMO_DIR)/fit/checkpoints/last.ckpt sample.n=$(DEMO_SAMPLES) sample.overwrite=true \
		hydra.run.dir=$(DEMO_DIR)/sample
	$(PY) -m avgen evaluate evaluate.pred_dir=$(DEMO_DIR)/sample/samples evaluate.plots=4 evaluate.overwrite=true \
		hydra.run.dir=$(DEMO_DIR)/evaluate
	$(PY) benchmarks/mini_demo.py $(DEMO_DIR)/sample/samples --real-clips 32 --out $(DEMO_DIR)/checks.json
	$(PY) -m avgen export ckpt_path=$(DEMO_DIR)/fit/checkpoints/last.ckpt export.dir=$(DEMO_DIR)/export \
		export.overwrite=true hydra.run.dir=$(DEMO_DIR)/export_run
	@echo "run folder:      $(DEMO_DIR)/fit  (checkpoints/, logs/metrics.csv)"
	@echo "sounding videos: $(DEMO_DIR)/sample/samples ($(DEMO_SAMPLES) mp4 + wav + prompt)"
	@echo "AV-Align:        $(DEMO_DIR)/evaluate/metrics.json (plots in $(DEMO_DIR)/evaluate/plots/)"
	@echo "did it learn?    $(DEMO_DIR)/checks.json (PASS/FAIL lines above)"
	@echo "shared model:    $(DEMO_DIR)/export  (avgen.from_pretrained('$(DEMO_DIR)/export'); model card README.md)"
	@echo "demo page:       $(PY) -m avgen app app.export_dir=$(DEMO_DIR)/export"

bench: setup
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/decode_timestamps.py
	$(PY) benchmarks/prepare_throughput.py
	$(PY) benchmarks/filter_scoring.py
	$(PY) benchmarks/joint_costs.py
	$(PY) benchmarks/tempotokens_costs.py
	$(PY) benchmarks/vta_ldm_costs.py
	$(PY) benchmarks/pipeline_costs.py
	$(PY) benchmarks/mini_codecs.py

clean-venv:
	rm -rf $(VENV)

# GPU readiness (benchmarks/gpu_check.py): a lent GPU machine has torch, lightning and transformers but not these; build
# their wheels here (the installed versions; Hydra's antlr4 runtime has no wheel on the registry: pip builds one), carry
# wheels/ with the working tree, then there: pip install --no-index --no-deps wheels/*.whl && make gpu-check
GPU_WHEELS = diffusers hydra-core omegaconf antlr4-python3-runtime webdataset braceexpand
gpu-wheels: setup
	rm -rf wheels && mkdir -p wheels
	$(PY) -m pip freeze | grep -i -E '^($(shell echo $(GPU_WHEELS) | tr ' ' '|'))==' > wheels/requirements.txt
	$(PY) -m pip wheel -q --no-deps -w wheels -r wheels/requirements.txt
	@du -sh wheels

# the check itself (on a machine without CUDA: a CPU dry run of the same code path at scale=tiny, exit 0)
GPU_CHECK_OUT ?= gpu_check.json
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)
