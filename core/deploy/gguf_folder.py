"""The model folder a GGUF export reads: its config.json (a Llama architecture, full-precision weights), its
safetensors files (never pickles), its chat template; JSON read with errors that say which file and what to do."""
from __future__ import annotations

import json
from pathlib import Path

SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM"})


class GGUFExportError(ValueError):
    """A model folder that cannot be exported as asked; the message says what is wrong and what would work."""


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise GGUFExportError(f"{path} is not valid JSON ({exc}); re-save the model's {what}") from None
    if not isinstance(data, dict):
        raise GGUFExportError(f"{path} should hold a JSON object ({what})")
    return data


def load_config(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise GGUFExportError(f"{model_dir} is not a folder: point the export at a merged model folder "
                              "(config.json, *.safetensors, tokenizer files)")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        hint = (" It holds a LoRA adapter (adapter_config.json): merge it into its base model first."
                if (model_dir / "adapter_config.json").is_file() else "")
        raise GGUFExportError(f"{model_dir} has no config.json, so it is not a Hugging Face model folder.{hint}")
    return read_json(config_path, "config")


def check_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
    if not archs:
        raise GGUFExportError(f"config.json names no architecture; GGUF export supports {supported}")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(f"GGUF export supports Llama-architecture models ({supported}); this model is {arch}. "
                              "Export it as safetensors instead, or convert it with llama.cpp's "
                              "convert_hf_to_gguf.py if llama.cpp supports it.")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantised")
        raise GGUFExportError(f"the weights in this folder are {method}-quantised; GGUF export needs full-precision "
                              "weights (export a merged 16-bit model, not a 4/8-bit checkpoint)")
    return arch


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding the model, in index order when sharded. Refuses pickled weights."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "weight index").get("weight_map") or {}
        files = list(dict.fromkeys(weight_map.values()))
        if not files:
            raise GGUFExportError(f"{index} lists no tensors")
        missing = [f for f in files if not (model_dir / f).is_file()]
        if missing:
            raise GGUFExportError(f"{model_dir} is missing weight shard(s) {', '.join(missing)} listed in "
                                  f"{index.name}; copy the whole model folder")
        return [model_dir / f for f in files]
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if files:
        return files
    pickled = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt*"))
    if pickled:
        raise GGUFExportError(f"{model_dir} has only pickled weights ({', '.join(pickled[:3])}); GGUF export reads "
                              "safetensors only (pickles can run code): re-save the model with "
                              "save_pretrained(safe_serialization=True)")
    if (model_dir / "adapter_model.safetensors").is_file():
        raise GGUFExportError(f"{model_dir} holds a LoRA adapter, not a model: merge it into its base model first")
    raise GGUFExportError(f"{model_dir} has no model weights (*.safetensors); GGUF export needs the merged "
                          "model's safetensors files next to config.json")


def chat_template(model_dir: Path) -> str | None:
    """The chat template: tokenizer_config.json's, else chat_template.jinja / chat_template.json (transformers 5)."""
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        template = read_json(cfg_path, "tokenizer config").get("chat_template")
        if isinstance(template, str) and template:
            return template
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if (model_dir / "chat_template.json").is_file():
        template = read_json(model_dir / "chat_template.json", "chat template").get("chat_template")
        if isinstance(template, str) and template:
            return template
    return None
