"""From a finished run to a serving endpoint.

    merge                 LoRA/QLoRA merged into the base, tensor by tensor (streaming safetensors)
    gguf                  GGUF (F16 / Q8_0) for llama.cpp and Ollama (``python -m core.deploy.gguf``)
    gguf_folder           the model folder it reads (architecture, safetensors files, chat template)
    gguf_tokenizer        the byte-level BPE tokenizer written into the GGUF
    ollama                the Ollama ``Modelfile`` that goes with a GGUF
    export                the ``export`` job kind (runs core): safetensors | gguf | adapter
    hub                   a push to the Hub with a model card
    local_server          ``transformers serve`` pinned to one folder, discoverable under a model name
    containers            TGI / vLLM ``docker run`` argument lists (token limits: core.estimate.serving)
    clouds                settings for Inference Endpoints, SageMaker, Vertex AI (text only)
    docker_engine         the docker SDK: engine, image pulls with progress, start / state / stop a container
    deployments           the deployments API: start, health, smoke test, stop, delete, reconcile
    local_deployments     local deployments: a row that follows its ``serve`` job on the runs core
    serve_job             the ``serve`` job kind: merge if needed, serve, watch /health, run until stopped
    deployment_rows       the ``deployments`` rows, their statuses, DeployError
    serve_targets         what a deployment serves (a run, the default, a folder) and its served name
    server_processes      ports, the by-hand server command, /health; an earlier version's server processes
    container_deployments deployments on TGI / vLLM containers (planned where no engine answers)
    sources               ``deployment:ID`` as a model source for the Playground and ``generate``
    cli                   ``python -m core export|deploy|deployments``
"""
