# syntax=docker/dockerfile:1
#
# The gpu-attribution node agent: `gpuattr exporter`, for the DaemonSet in deploy/.
#
#   docker build -t gpu-attribution:0.1.0 .
#   docker run --rm --runtime=nvidia --pid=host -p 9835:9835 -v /proc:/host/proc:ro \
#       gpu-attribution:0.1.0 --proc-root=/host/proc
#
# NVML (libnvidia-ml.so.1) is not in the image: it comes from the host driver, injected by the NVIDIA
# container runtime, which reads NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=utility (set
# below and again in the DaemonSet): every GPU of the node is visible, none is requested, and only the
# "utility" capability (NVML, nvidia-smi) is mounted.
#
# Base image pinned by tag and by the digest of its multi-architecture index. The digest was taken from
# public references, not pulled here (no Docker engine on the build machine); check or refresh it with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Build-only tools in their own venv: grpcio-tools (protoc) never reaches the final image. The versions
# are the project's dev pins (pyproject.toml); protobuf matches the runtime pin of the `kubernetes` extra.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install grpcio-tools==1.85.1 protobuf==7.36.2

WORKDIR /src
# Only what the node agent is made of (see .dockerignore): the shared core, the agent and the command line.
# No simulator, tests, attribution job, dashboards or data. (pydantic still comes in: the kubernetes client needs it.)
COPY pyproject.toml README.md ./
COPY common/ common/
COPY gpuattr/ gpuattr/
COPY exporter/ exporter/

# The kubelet pod-resources gRPC stubs are generated, not committed (gitignored): make them here.
RUN /opt/build/bin/python -m exporter.resolve.proto.generate \
 && test -f exporter/resolve/proto/podresources/v1/api_pb2_grpc.py

# The runtime venv, at the path it keeps in the final stage. pip compiles the .pyc files now, so the
# read-only root filesystem never needs a write. pip and setuptools are removed afterwards: nothing
# installs at run time. The kubernetes package ships an asyncio client (kubernetes/aio, about 68 MB of
# the venv's 194 MB) beside the sync one; the exporter uses only the sync client and watch
# (exporter/resolve/kube.py), so it is deleted; the import check after it guards what is used.
RUN python -m venv /opt/gpuattr \
 && /opt/gpuattr/bin/pip install ".[kubernetes,otlp]" \
 && rm -rf /opt/gpuattr/lib/python3.*/site-packages/kubernetes/aio \
 && /opt/gpuattr/bin/python -c "import exporter.resolve.proto.podresources.v1.api_pb2_grpc, grpc; from kubernetes import client, config, watch" \
 && /opt/gpuattr/bin/gpuattr exporter --help >/dev/null \
 && /opt/gpuattr/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('simulator', 'pandas', 'matplotlib', 'attribution')))" \
 && /opt/gpuattr/bin/pip uninstall --yes pip setuptools

# ---- the attribution job's image: `docker build --target attribution .` (pandas and pyarrow stay out of
# the exporter's image) ----------------------------------------------------------------------------------
FROM builder AS attribution-builder
COPY attribution/ attribution/
RUN python -m venv /opt/gpuattr-job \
 && /opt/gpuattr-job/bin/pip install ".[kubernetes,attribution]" \
 && rm -rf /opt/gpuattr-job/lib/python3.*/site-packages/kubernetes/aio \
 && /opt/gpuattr-job/bin/gpuattr attribute --help >/dev/null \
 && /opt/gpuattr-job/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS attribution
LABEL org.opencontainers.image.title="gpu-attribution job" \
      org.opencontainers.image.description="Splits each vLLM server's GPU memory and recommends what to give back" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=attribution-builder /opt/gpuattr-job /opt/gpuattr-job
ENV PATH=/opt/gpuattr-job/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["gpuattr", "attribute"]

# ---- the exporter's image (the default target, so it comes last) ----------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="gpu-attribution exporter" \
      org.opencontainers.image.description="Who uses which GPU, how much of it, for which model: a Prometheus exporter per GPU node" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

COPY --from=builder /opt/gpuattr /opt/gpuattr

ENV PATH=/opt/gpuattr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility

# Non-root, numeric (so Kubernetes can verify runAsNonRoot without an /etc/passwd entry). The DaemonSet
# sets the same user; deploy/overlays/root-podresources overrides it to read the kubelet socket.
USER 65532:65532
WORKDIR /

EXPOSE 9835

# For `docker run` only: Kubernetes ignores it and uses the DaemonSet's probes. The slim image has no
# curl, so Python asks /healthz.
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9835/healthz', timeout=2)"]

ENTRYPOINT ["gpuattr", "exporter"]
