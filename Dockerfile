# One image for every FedsLLM role; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    FEDSLLM_CACHE=/cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedsllm ./fedsllm
COPY client ./client
COPY main_server ./main_server
COPY fed_server ./fed_server
COPY proto ./proto

# The CPU build of torch, pinned like everywhere else (the default index would
# pull a multi-gigabyte CUDA build).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        torch==2.13.0 . \
    && useradd --create-home fedsllm && mkdir -p /cache /data && chown fedsllm /cache /data
USER fedsllm
