# syntax=docker/dockerfile:1
# kubeclip images, one Dockerfile, two targets:
#
#   docker build --target controller -t ghcr.io/kubeclip/kubeclip-controller:0.1.0 .
#   docker build --target trainer    -t ghcr.io/kubeclip/kubeclip-trainer:0.1.0 .
#
# controller: slim Python with `./[controller]` (kopf, kubernetes, prometheus-client): no torch,
#             entrypoint `kubeclip` (the Helm chart runs `kubeclip operator ...`).
# trainer:    a CUDA PyTorch base whose torch is the one pyproject.toml pins (2.14.1), plus
#             `./[trainer]` (open_clip_torch 3.3.0, ...); the controller runs
#             `python -m trainer.node /etc/kubeclip/job.yaml` in it.
# Both run as the non-root user 1000:1000, the uid the chart's securityContext and the
# controller's pod securityContext expect.
#
# The default base tags are pinned but UNVERIFIED: no container registry was reachable where this
# file was written, so neither tag was pulled. tests/unit/test_dockerfile.py runs hadolint and
# replays the pip install steps below in clean virtualenvs; `make images` builds both targets with
# buildah on local bases of the same shape (every line below runs unmodified) and the e2e tests
# (tests/e2e) run the result on a real node.

# The base images are build arguments whose defaults are the official images. `make images`
# (hack/images.sh) builds local bases of the same shape, because no registry is reachable there:
#   PYTHON_IMAGE  Debian bookworm + python3.11 (`python`, `pip` on PATH)
#   TORCH_IMAGE   the same + torch 2.14.1 from PyPI, with `python`/`pip` of an environment root may install into
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TORCH_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# ---------------------------------------------------------------------------------------------
# controller: build a virtualenv, then copy it into a fresh slim image (no build leftovers).
FROM ${PYTHON_IMAGE} AS controller-build
ENV VENV=/opt/kubeclip \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubeclip/ kubeclip/
COPY controller/ controller/
# The controller and the trainer share only the API package (kubeclip/api: pydantic), installed
# with kubeclip itself; the training code (trainer/) is not copied into this image.
RUN python -m venv "$VENV" \
    && "$VENV/bin/pip" install --no-cache-dir "./[controller]"

FROM ${PYTHON_IMAGE} AS controller
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kubeclip-controller" \
      org.opencontainers.image.description="kubeclip's FineTuneJob controller (kopf)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kubeclip/kubeclip" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --gid 1000 kubeclip \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kubeclip
COPY --from=controller-build /opt/kubeclip /opt/kubeclip
ENV PATH=/opt/kubeclip/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
# 8080: Prometheus metrics, 8081: /healthz and /readyz.
EXPOSE 8080 8081
ENTRYPOINT ["kubeclip"]
CMD ["operator"]

# ---------------------------------------------------------------------------------------------
# trainer: torch comes from the base image; pip sees torch==2.14.1 already satisfied and keeps
# it, so only open_clip_torch and the small dependencies are added.
FROM ${TORCH_IMAGE} AS trainer
ARG TORCH_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kubeclip-trainer" \
      org.opencontainers.image.description="kubeclip's OpenCLIP fine-tuning trainer (PyTorch, CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kubeclip/kubeclip" \
      org.opencontainers.image.base.name="${TORCH_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/kubeclip \
    HF_HOME=/home/kubeclip/.cache/huggingface
WORKDIR /opt/kubeclip/src
COPY pyproject.toml README.md ./
COPY kubeclip/ kubeclip/
COPY trainer/ trainer/
RUN pip install --no-cache-dir "./[trainer]"
# uid 1000 may already exist in the base image (Ubuntu's "ubuntu" user); reuse it if so.
RUN (getent group 1000 >/dev/null || groupadd --gid 1000 kubeclip) \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --no-create-home kubeclip) \
    && mkdir -p /home/kubeclip/.cache /workspace \
    && chown -R 1000:1000 /home/kubeclip /workspace
WORKDIR /workspace
USER 1000:1000
# 9090: the trainer's Prometheus metrics and /progress (spec.metrics.port); 23456: torch.distributed rendezvous.
EXPOSE 9090 23456
CMD ["python", "-m", "trainer.node", "/etc/kubeclip/job.yaml"]
