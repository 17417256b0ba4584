"""From a finished run to a serving endpoint.

    merge        LoRA/QLoRA merged into the base, tensor by tensor (streaming safetensors)
    gguf_export  GGUF (F16 / Q8_0) for llama.cpp and Ollama, plus a Modelfile
    export       the ``export`` job kind (runs core): safetensors | gguf | adapter
    local_server ``transformers serve`` pinned to one folder, discoverable under a model name
    launchers    TGI / vLLM ``docker run`` argument lists, sizing, the docker SDK, cloud settings
    deployments  the ``deployments`` rows: start, health, smoke test, stop, reconcile
    cli          ``python -m core export|deploy|deployments``
"""
