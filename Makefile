# r1-pipeline. `make help` lists the targets; ARGS passes Hydra overrides to a stage:
#   make stage-1 ARGS="stage.optim.lr=5e-5 run_name=exp1"
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
CACHE_DIR ?= $(if $(R1_CACHE_DIR),$(R1_CACHE_DIR),.cache)
INSTALLED := $(VENV)/.installed
BASE_MODEL := $(CACHE_DIR)/models/SmolLM2-135M-Instruct/.complete

.PHONY: help gpu-check test-faults lint format bench bench-rl-update bench-reward-attacks setup pipeline status report distill stage-1 stage-2 stage-3 train-rm stage-4 eval test test-slow slurm-local test-unit test-integration clean-runs

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(INSTALLED) $(BASE_MODEL)  ## create .venv, install (CPU torch 2.13.0 without a GPU), prepare the base model

$(INSTALLED): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

$(BASE_MODEL): $(INSTALLED)
	$(PY) -m pipeline.run.model_prep

stage-1: setup  ## stage 1: cold-start SFT (resumes if interrupted; no-op when finished)
	$(PY) -m pipeline.run.launch stage=stage1 $(ARGS)

stage-2: setup  ## stage 2: GRPO reasoning RL from stage-1's export (vLLM rollouts)
	$(PY) -m pipeline.run.launch stage=stage2 $(ARGS)

stage-3: setup  ## stage 3: rejection sampling from stage-2 (vLLM, sharded, resumable), then SFT
	$(PY) -m pipeline.run.launch stage=stage3 $(ARGS)

stage-4: setup  ## stage 4: alignment RL: rule rewards (reasoning) + reward models (general prompts)
	$(PY) -m pipeline.run.launch stage=stage4 $(ARGS)

distill: setup  ## SFT of a student (stage.init_from) on stage-3's dataset, then a held-out check
	$(PY) -m pipeline.run.launch stage=distill $(ARGS)

train-rm: setup  ## stage-4's reward models: rm_helpful (pairwise) then rm_safety (pointwise); resumable
	$(PY) -m pipeline.run.launch stage=rm_helpful $(ARGS)
	$(PY) -m pipeline.run.launch stage=rm_safety $(ARGS)

eval: setup  ## evaluate base + finished stages (greedy, pass@1 over k samples, cons@k); results.md per run
	$(PY) -m pipeline.run.launch stage=eval $(ARGS)

pipeline: setup  ## the whole pipeline in order (finished stages are skipped, a failed one resumes); ARGS="run_name=x"
	$(MAKE) stage-1 stage-2 stage-3 train-rm stage-4 eval ARGS="$(ARGS)"

bench-rl-update: setup  ## train seconds per sample of one GRPO step: with a reference, without, with the zero-gradient skip; ARGS="run_name=x"
	$(PY) scripts/bench_rl_update.py $(ARGS)

bench-reward-attacks: setup  ## scoring time of each adversarial completion (pipeline/rl/attacks.py); the worst case last
	$(PY) scripts/bench_reward_attacks.py $(ARGS)

bench: setup  ## the project against TRL GRPOTrainer, raw vLLM and a padded HF Trainer; ARGS="mode=tiny" or "device=cuda"
	$(PY) scripts/bench.py $(ARGS)

status:  ## each stage of a run: complete / running / failed / not started, with key figures; ARGS="run_name=x"
	@$(PY) -m pipeline.run.status $(ARGS)

report:  ## PNG plots (SFT loss, RL curves as R1 Fig. 2-3, accuracy by stage) + runs/<run>/report/report.md
	$(PY) -m pipeline.run.report $(ARGS)

lint: setup  ## ruff: lint and format check (CI runs it before the tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff: fix what it can and format the tree
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup  ## all tests: CPU unit tests + integration (real stage-1 on a tiny model, kill + resume)
	$(PY) -m pytest -q --durations=20 -m "not gpu and not slow" tests $(ARGS)

test-slow: setup  ## slow CPU tiers: stage-2 memory budget on the embedded model, the fault-injection sweep
	$(PY) -m pytest -q -m "slow and not gpu" tests $(ARGS)

gpu-check:  ## on a CUDA machine: gpu-marked tests + a short bf16 pipeline, then the GPU figures (<= 8 min); ARGS="--model DIR"
	$(if $(wildcard $(PY)),$(PY),python3) scripts/gpu_check.py $(ARGS)

test-faults: setup  ## the fault-injection sweep of every stage (slow tier): R1_FAULT_KILLS=20 random kills each, R1_FAULT_SEED replays
	$(PY) -m pytest -q -s -m "slow and not gpu" tests/integration/test_fault_sweep.py $(ARGS)

slurm-local:  ## start a one-node Slurm cluster on this machine (root, Debian slurm-wlm) for the real sbatch test
	scripts/local_slurm.sh

test-unit: setup  ## fast unit tests only
	$(PY) -m pytest -q -m "not gpu and not integration" tests $(ARGS)

test-integration: setup  ## integration tests only
	$(PY) -m pytest -q -m "integration and not slow" tests $(ARGS)

clean-runs:  ## delete runs/ (all run folders!)
	rm -rf runs
