# kubeclip — the two commands a newcomer needs are `make demo` and `make test`.
#
# VENV        where the Python environment lives (created on first use)
# KUBECLIP_TOOLS  where kube-apiserver, etcd, kubectl, helm, promtool are cached (hack/tools.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kubeclip-installed
export KUBECLIP_TOOLS ?= $(CURDIR)/.tools
PYTEST_ARGS ?=

.PHONY: help venv demo test test-unit bench bench-gpu tools cluster-up cluster-down images deploy monitoring-up kueue-up e2e e2e-up e2e-tests crd lint clean

help:
	@echo "make demo     fine-tune a tiny OpenCLIP model locally on a generated dataset (2 processes)"
	@echo "make test     the whole test suite (builds the test control plane on first use)"
	@echo "make lint     ruff format + ruff check + mypy + import-linter + shellcheck (also part of make test)"
	@echo "make bench    kubeclip vs open_clip_train side by side, plus the controller at scale"
	@echo "make bench-gpu  the same on one GPU: ViT-B-32, bf16 autocast, batch 256 (BENCH_GPU_ARGS=--wheels DIR offline)"
	@echo "make tools    build/fetch kube-apiserver, etcd, kubectl, helm, promtool into $(KUBECLIP_TOOLS)/bin"
	@echo "make cluster-up / cluster-down   a real one-node Kubernetes in its own network namespace (.cluster/kubeconfig; root)"
	@echo "make images   build kubeclip-controller:dev and kubeclip-trainer:dev from ./Dockerfile (buildah) into the node"
	@echo "make deploy   helm install helm/kubeclip into kubeclip-system with the dev images"
	@echo "make monitoring-up  the Prometheus Operator + Prometheus on the node, scraping kubeclip (.cluster/prometheus-url)"
	@echo "make kueue-up Kueue v0.17.0 on the node (FineTuneJob as an external framework, a ResourceFlavor; hack/kueue.py)"
	@echo "make e2e      cluster-up + images + deploy + monitoring-up + kueue-up (make e2e-up), then the end-to-end tests on the node (tests/e2e; make e2e-tests)"

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[trainer,controller,test]'
	@touch $@

venv: $(STAMP)

demo: venv
	$(PY) -m hack.demo

tools:
	bash hack/tools.sh

test: venv tools lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: venv tools
	$(PY) -m hack.bench_trainer
	$(PY) -m hack.bench_controller

# One GPU: kubeclip vs open_clip_train 3.3.0, ViT-B-32 (hack/bench_gpu.py --help for the knobs).
BENCH_GPU_ARGS ?=
bench-gpu: venv
	$(PY) -m hack.bench_gpu $(BENCH_GPU_ARGS)

cluster-up: venv
	bash hack/tools.sh node
	$(PY) -m hack.cluster up

cluster-down: venv
	$(PY) -m hack.cluster down

images: venv
	bash hack/tools.sh node
	KUBECLIP_PYTHON=$(PY) bash hack/images.sh app

deploy: venv
	$(PY) -m hack.deploy

monitoring-up: venv
	bash hack/tools.sh monitoring
	$(PY) -m hack.monitoring up

kueue-up: venv
	bash hack/tools.sh kueue
	$(PY) -m hack.kueue up

# e2e-up brings the node to where the tests start (.ci/run runs it in the background during make
# test); e2e-tests runs them on a node that is up; e2e is both.
e2e-up: cluster-up images deploy monitoring-up kueue-up

e2e-tests: venv
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

e2e: e2e-up
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

crd: venv
	$(VENV)/bin/kubeclip crd > helm/kubeclip/files/crd-finetunejobs.yaml

# ruff (format + lint), mypy (strict on kubeclip/, controller/ and devkit/; check_untyped_defs on trainer/),
# import-linter, shellcheck (every tracked shell script: *.sh and whatever starts with a bash/sh shebang,
# such as .ci/run); the same hooks run before each commit with `pre-commit install` (.pre-commit-config.yaml).
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/shellcheck $$(git grep -lIE '^#!.*(bash|/sh)')

clean:
	rm -rf .cluster out runs
