# syntax=docker/dockerfile:1
# Tuneyard for a team: one image for the API and console (the default command), a worker
# (`tuneyard worker`) and the migration (`tuneyard db upgrade`), all over one data dir at /data.
# compose.yaml runs them beside PostgreSQL; the README's team section says how.

FROM python:3.11-slim AS build

# llama.cpp's Python binding (the `llama` extra) builds from source: about 10 minutes, once;
# the pip cache mount keeps the built wheel for later builds.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/tuneyard
ENV PATH=/opt/tuneyard/bin:$PATH

# PyPI's torch wheels carry CUDA (several gigabytes). On machines without an NVIDIA GPU, build
# with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for CPU-only wheels of
# the same pinned torch.
ARG TORCH_INDEX_URL=

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tuneyard ./tuneyard
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url $TORCH_INDEX_URL} '.[train,embed,llama,images]'


FROM python:3.11-slim

# OpenMP, which the llama.cpp library built above links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The data dir holds keys and passwords: readable by the tuneyard user alone. A new named
# volume mounted at /data takes this owner and mode.
RUN useradd --create-home --uid 10001 --user-group tuneyard \
    && mkdir /data \
    && chown tuneyard:tuneyard /data \
    && chmod 700 /data

COPY --from=build /opt/tuneyard /opt/tuneyard
ENV PATH=/opt/tuneyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TUNEYARD_DATA_DIR=/data

USER tuneyard
WORKDIR /home/tuneyard
VOLUME /data
EXPOSE 8000

# Alive, not ready: readiness (/api/v1/health/ready) also needs a worker, which an API
# container should not be restarted for. Worker and migration containers turn this off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)"

CMD ["tuneyard", "serve", "--no-worker", "--host", "0.0.0.0"]
