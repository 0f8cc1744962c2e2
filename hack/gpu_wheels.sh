#!/usr/bin/env bash
# The wheels `make bench-gpu` needs on a GPU machine without network that already has torch,
# torchvision, numpy, pillow, pandas, safetensors, prometheus-client, pyyaml, timm and
# huggingface_hub (the lent H100/H200 image; BENCHMARKS.md, "Running it on a lent GPU"):
# open_clip_torch (open_clip + open_clip_train), its tokenizer's ftfy, the peer's webdataset, and
# kubeclip's pydantic, at the versions pyproject.toml / the venv pin. Python 3.12, x86-64.
#
#   bash hack/gpu_wheels.sh [DIR]     # default .whl (ignored by git via .git/info/exclude)
set -euo pipefail
dir=${1:-.whl}
py=${PYTHON:-python3}
mkdir -p "$dir"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 webdataset==1.0.2 braceexpand==0.1.7 \
  pydantic==2.14.3 pydantic-core==2.50.4 typing-extensions==4.16.0 typing-inspection==0.4.5 annotated-types==0.8.0
ls "$dir"
