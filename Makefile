# jepa-ray: bucket of video -> V-JEPA world model -> Ray Serve endpoint. `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JEPA := $(VENV)/bin/jepa
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
# pip-tools for `make lock` lives in a scratch venv of its own, never in .venv
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/jepa-ray-piptools
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
LOCK_NOTE := \# torch is pinned without its +cpu tag: the CPU wheel where pip finds one, the PyPI CUDA build elsewhere (Makefile, target lock)
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` (or `make lock ...`) on a machine whose
# pip finds no CPU torch wheel: without it, setup installs PyPI's CUDA torch (GBs of nvidia-* wheels)
TORCH_INDEX ?=

.PHONY: help setup system-deps lock demo physics reacher point-mass test test-unit bench bench-data bench-stream bench-train bench-serve bench-fuzz bench-plan bench-gpu test-serve-file stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: system-deps $(STAMP) ## create .venv from requirements-dev.lock (torch 2.13.0 CPU where pip finds it, Ray, MLflow, PyAV, SeaweedFS, MuJoCo, pytest)

# MuJoCo renders off-screen through Mesa's EGL (llvmpipe, on the CPU): Debian's libegl-mesa0, libgl1
# and libgl1-mesa-dri. Installed when missing where apt-get can (root, as in CI); a hint elsewhere.
system-deps:
	@ldconfig -p | grep -q 'libEGL_mesa.so.0' || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Mesa EGL for MuJoCo rendering (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	    apt-get install -y -qq libegl-mesa0 libgl1 libgl1-mesa-dri >/dev/null; \
	  else echo "make: MuJoCo rendering needs Mesa EGL: sudo apt-get install libegl-mesa0 libgl1 libgl1-mesa-dri" >&2; fi; }

# requirements-dev.lock holds every runtime pin of requirements.lock plus [dev] (pytest, SeaweedFS's
# `weed`); the project itself goes in editable, with --no-deps so that only locked versions are used.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

# torch: the locks pin it without its local version tag ("torch==2.13.0", resolved here against the
# CPU wheel 2.13.0+cpu). `pip install -r` then takes the +cpu wheel wherever pip can find one (this
# machine's find-links, or the PyTorch CPU index: docs/install.md) and the PyPI CUDA build elsewhere
# (the KubeRay image). Resolving against the CPU wheel keeps the CUDA-only nvidia-*/triton packages
# out of the locks; the CUDA wheel pins those exactly itself. No --generate-hashes: the two builds'
# hashes differ. The recipe refuses a resolution that picked a non-CPU torch.
lock: ## regenerate requirements.lock (runtime) and requirements-dev.lock (+ [dev]) from pyproject.toml with pip-compile
	[ -x $(LOCK_VENV)/bin/pip-compile ] || { $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/pip install --quiet pip==$(PIP_VERSION) pip-tools==7.6.2; }
	$(PIP_COMPILE) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -o requirements.lock pyproject.toml
	grep -q '^torch==[^ ]*+cpu$$' requirements.lock || { echo "make lock: pip resolved a non-CPU torch; rerun with TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2; exit 1; }
	sed -i -E -e 's/^(torch==[^+ ]+)\+cpu$$/\1/' -e '1i $(LOCK_NOTE)' requirements.lock
	$(PIP_COMPILE) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	sed -i -E -e 's/^(torch==[^+ ]+)\+cpu$$/\1/' -e '1i $(LOCK_NOTE)' requirements-dev.lock
	@grep -E '^(torch|ray|mlflow|av|pyarrow|boto3|botocore)==' requirements.lock

demo: setup ## the whole flow: stack up, synthesise, pretrain (Ray Train), register, serve, embed over HTTP
	$(JEPA) demo

physics: setup ## intuitive-physics recipe: synthesise, pretrain, then surprise on violation pairs and attentive probes (58-60 min on 2 CPU cores with native bf16: BENCHMARKS.md)
	$(JEPA) demo --recipe physics

reacher: setup ## world model that plans: record MuJoCo reacher episodes, pretrain the encoder, train the AC predictor and state reader, eval plan (98% of goals, 133 min on 2 CPU cores: BENCHMARKS.md)
	$(JEPA) demo --recipe reacher

point-mass: setup ## the same world-model recipe on DMC point_mass (the second environment)
	$(JEPA) demo --recipe point-mass

# pytest-xdist workers, each with its own stack and Ray on its own ports (tests/conftest.py), a
# test file per worker at a time (module fixtures train once): the suite mostly waits on servers,
# so on 2 cores 2 workers keep both busy (3 gained ~20 s of 14 min and slowed the training tests by half).
TEST_WORKERS ?= 2
test: setup ## every test: unit, then integration against real SeaweedFS, MLflow, Ray and Serve (TEST_WORKERS=2 in parallel)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15
	$(MAKE) --no-print-directory test-serve-file

test-serve-file: setup ## `serve run` of infra/serve/serve-config.yaml against a fresh test stack (in its own pytest process; `make test` runs it last)
	JEPA_TEST_SERVE_FILE=1 $(PY) -m pytest -q tests/ray_jobs/test_serve_config_file.py

test-unit: setup ## unit tests only (no servers)
	$(PY) -m pytest -q -m "not integration"

bench: setup ## benchmarks that print figures (train-step throughput)
	$(PY) bench/bench_train_step.py --arch tiny --batch-size 8 --frames 16 --img-size 64

bench-data: setup ## data-loading benchmark: clips/s per core and RSS, reference (decord) vs direct vs shards
	-$(PY) -m pip install --quiet --no-deps --target .bench/decordlib decord==0.6.0
	$(PY) bench/bench_data.py $$([ -d .bench/decordlib/decord ] && echo --decord-path .bench/decordlib)

bench-stream: setup ## training data stream (Ray Data, shard mode) vs its decode function: clips per CPU-s, first batch, 1 vs 2 nodes
	$(JEPA) stack up --no-ray
	eval "$$($(JEPA) stack env)" && $(PY) bench/bench_stream.py

bench-train: setup ## Ray Train overhead: the same tiny-model steps in a 1-worker TorchTrainer vs a plain PyTorch loop
	$(PY) bench/bench_train_overhead.py --steps 40 --threads 1

bench-serve: setup ## Serve under load on loopback: /v1/embed sweep (concurrency 1-64, batching off/on, replicas over time), HTTP vs in-process
	$(JEPA) stack up
	eval "$$($(JEPA) stack env)" && $(PY) bench/bench_serve.py

bench-fuzz: setup ## fuzz every Serve route from its OpenAPI schema (schemathesis cases, and valid requests with one part broken): answers >= 500, dropped connections
	$(JEPA) stack up
	eval "$$($(JEPA) stack env)" && $(PY) bench/fuzz_serve.py

bench-plan: setup ## one planning step (encode + CEM over the AC predictor) at a tiny size, checked against an eager CEM; --size reference on a GPU
	$(PY) bench/bench_plan_step.py --size tiny

bench-gpu: setup ## on a CUDA machine: GPU tests, ViT-L step vs the V-JEPA 2 reference (VJEPA2_REF, VJEPA2_ANCHOR), the V-JEPA 2-AC-sized plan step, Ray Train use_gpu vs plain
	$(PY) -m pytest -q tests/jepa/test_cuda.py
	$(PY) bench/bench_plan_step.py --size reference --dtype bf16
	$(PY) bench/bench_plan_step.py --size reference --dtype bf16 --samples 300 --iterations 15 --horizon 3
	VJEPA2_REF=$${VJEPA2_REF:-.ref/vjepa2} $(PY) bench/bench_vs_reference.py --arch large --bs 24
	$(PY) bench/bench_train_overhead.py --gpu --config configs/vitl16.yaml --batch-size 24 --steps 8 --warmup 2 --threads 4

stack-up: setup ## start the local stack (SeaweedFS :8333, MLflow :5000, Ray head)
	$(JEPA) stack up

stack-down: ## stop what stack-up started
	$(JEPA) stack down

stack-status: ## show the local stack
	$(JEPA) stack status

clean: ## stop the stack and delete .venv and .stack
	-[ -x $(JEPA) ] && $(JEPA) stack down
	rm -rf $(VENV) .stack
