# jepa-ray: bucket of video -> V-JEPA world model -> Ray Serve endpoint. `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JEPA := $(VENV)/bin/jepa
STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-unit bench bench-data bench-train bench-gpu stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with the pinned dependencies (torch CPU, Ray, MLflow, PyAV, SeaweedFS)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: setup ## the whole flow: stack up, synthesise, pretrain (Ray Train), register, serve, embed over HTTP
	$(JEPA) demo

test: setup ## every test: unit, then integration against real SeaweedFS, MLflow, Ray and Serve
	$(PY) -m pytest -q

test-unit: setup ## unit tests only (no servers)
	$(PY) -m pytest -q -m "not integration"

bench: setup ## benchmarks that print figures (train-step throughput)
	$(PY) bench/bench_train_step.py --arch tiny --batch-size 8 --frames 16 --img-size 64

bench-data: setup ## data-loading benchmark: clips/s per core and RSS, reference (decord) vs direct vs shards
	-$(PY) -m pip install --quiet --no-deps --target .bench/decordlib decord==0.6.0
	$(PY) bench/bench_data.py $$([ -d .bench/decordlib/decord ] && echo --decord-path .bench/decordlib)

bench-train: setup ## Ray Train overhead: the same tiny-model steps in a 1-worker TorchTrainer vs a plain PyTorch loop
	$(PY) bench/bench_train_overhead.py --steps 40 --threads 1

bench-gpu: setup ## on a CUDA machine: GPU tests, ViT-L step vs the V-JEPA 2 reference (in VJEPA2_REF), Ray Train use_gpu vs plain
	$(PY) -m pytest -q tests/jepa/test_cuda.py
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
