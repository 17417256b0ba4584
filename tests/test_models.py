"""Model references: the embedded default, local folders, Hub ids, and clear errors for everything else."""
import pytest

from core.models import ModelNotFoundError, resolve_model


def test_default_resolves_to_the_converted_embedded_model(default_model_dir):
    r = resolve_model("default")
    assert r.kind == "default" and r.path == str(default_model_dir)
    assert (default_model_dir / "model.safetensors").is_file()
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(r.path).model_type == "llama"


def test_local_dir_and_hub_id(default_model_dir, tmp_path):
    assert resolve_model(str(default_model_dir)).kind == "local"
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct").kind == "hub"


def test_unknown_paths_are_explained(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("/no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(str(f))
