# kubeclip — the two commands a newcomer needs are `make demo` and `make test`.
#
# VENV        where the Python environment lives (created on first use)
# KUBECLIP_TOOLS  where kube-apiserver, etcd, kubectl, helm, promtool are cached (hack/tools.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kubeclip-installed
export KUBECLIP_TOOLS ?= $(CURDIR)/.tools
PYTEST_ARGS ?=

.PHONY: help venv demo test test-unit bench tools cluster-up cluster-down images deploy e2e crd lint clean

help:
	@echo "make demo     fine-tune a tiny OpenCLIP model locally on a generated dataset (2 processes)"
	@echo "make test     the whole test suite (builds the test control plane on first use)"
	@echo "make bench    kubeclip vs open_clip_train side by side, plus the controller at scale"
	@echo "make tools    build/fetch kube-apiserver, etcd, kubectl, helm, promtool into $(KUBECLIP_TOOLS)/bin"
	@echo "make cluster-up / cluster-down   a real one-node Kubernetes in its own network namespace (.cluster/kubeconfig; root)"
	@echo "make images   build kubeclip-controller:dev and kubeclip-trainer:dev from ./Dockerfile (buildah) into the node"
	@echo "make deploy   helm install helm/kubeclip into kubeclip-system with the dev images"
	@echo "make e2e      cluster-up + images + deploy, then the end-to-end tests on the node (tests/e2e)"

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[trainer,controller,test]'
	@touch $@

venv: $(STAMP)

demo: venv
	$(PY) hack/demo.py

tools:
	bash hack/tools.sh

test: venv tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: venv tools
	$(PY) hack/bench_trainer.py
	$(PY) hack/bench_controller.py

cluster-up: venv
	bash hack/tools.sh node
	$(PY) hack/cluster.py up

cluster-down: venv
	$(PY) hack/cluster.py down

images: venv
	bash hack/tools.sh node
	KUBECLIP_PYTHON=$(PY) bash hack/images.sh app

deploy: venv
	$(PY) hack/deploy.py

e2e: cluster-up images deploy
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

crd: venv
	$(VENV)/bin/kubeclip crd > helm/kubeclip/files/crd-finetunejobs.yaml

lint: venv
	$(VENV)/bin/lint-imports

clean:
	rm -rf .cluster out runs
