# The coldstart image: one console script, `coldstart`, for the service and the trainer.
#
#   docker build -t coldstart .                                # service, CPU torch (default target)
#   docker build -t coldstart-trainer --target trainer-gpu .   # meta-training on a CUDA GPU
#
# Both run as the numeric non-root user 10001 and write nothing outside /tmp, so they
# run with a read-only root filesystem when /tmp is a writable volume (the Helm chart
# mounts an emptyDir there).

# ---------------------------------------------------------------------------------------
# builder: the project and its dependencies in a virtual environment at /opt/venv.
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch first, from the CPU index: the project pins torch==2.13.0, which 2.13.0+cpu
# satisfies, so `pip install .` below keeps it instead of pulling the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY trainer ./trainer
COPY service ./service
# Not editable: the venv must stand alone once copied out of this stage.
RUN pip install . \
    && coldstart --help >/dev/null

# ---------------------------------------------------------------------------------------
# trainer-gpu: `coldstart train` on a CUDA GPU, for the chart's training Job.
# The CUDA `base` image is enough: the PyPI torch wheel brings its own CUDA user-space
# libraries (cuBLAS, cuDNN, ...) as nvidia-* wheels; the driver comes from the node.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS trainer-gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp

# Ubuntu's python3 (3.12), whatever patch release the archive carries: pinning an exact
# Debian revision breaks the build as soon as a security update replaces it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch 2.13.0 from PyPI's default index: the CUDA build.
RUN pip install torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY trainer ./trainer
COPY service ./service
RUN pip install . \
    && coldstart --help >/dev/null \
    && rm -rf /src

RUN groupadd --gid 10001 coldstart \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin coldstart

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["coldstart"]
CMD ["train", "--help"]

# ---------------------------------------------------------------------------------------
# runtime: the service. The last stage, so a plain `docker build .` builds it. Same base
# as the builder, so the venv's interpreter links (/usr/local/bin/python3.11) resolve.
FROM python:3.11-slim AS runtime

# A read-only root filesystem: everything that wants a writable home or a temp dir
# (matplotlib's cache, torch's, Python's tempfile) is pointed at /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp

RUN groupadd --gid 10001 coldstart \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin coldstart

# Owned by root and not writable by the service user.
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
# gRPC, Prometheus metrics.
EXPOSE 50051 9464
ENTRYPOINT ["coldstart"]
CMD ["serve"]
