# One image for every FedsLLM role; the compose file (`fedsllm compose`) picks
# each container's command.
#
#   docker build -t fedsllm:latest .
#   docker build --build-arg TORCH_INDEX_URL= -t fedsllm:latest .   # behind a mirror
#
# TORCH_INDEX_URL is the extra index torch comes from (the CPU build: the
# default index would pull a multi-gigabyte CUDA build). Empty means none: pip
# then finds torch on its configured index or PIP_FIND_LINKS, and never waits
# on an index it cannot reach.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    FEDSLLM_CACHE=/opt/fedsllm/cache

# iproute2 for `--links tc` clients (tc, ip: ifb), the only role that runs as root.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --create-home --uid 1000 fedsllm

# Dependencies first, in layers of their own, so a code change rebuilds only
# what follows them.
RUN pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY fedsllm ./fedsllm
COPY client ./client
COPY main_server ./main_server
COPY fed_server ./fed_server
COPY proto ./proto
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /data "$FEDSLLM_CACHE" && chown fedsllm /data "$FEDSLLM_CACHE"

# The default scenario's pretrained base, baked in: every container loads the
# same bytes, and no role pretrains at start-up or shares a cache volume.
USER fedsllm
RUN python -c "from fedsllm.config import load_scenario; \
from fedsllm.model.build import prepare_base; \
prepare_base(load_scenario('/app/fedsllm/scenarios/default.toml'))"
