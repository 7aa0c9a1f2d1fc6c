"""The vLLM backend's wiring, with a stand-in ``vllm`` module (vLLM itself needs a GPU and is not installed
here): same prompt token ids as the hf backend, greedy settings, stop strings cut the harness's way, LoRA
adapters passed as a request, results scored and written like any evaluation."""

import json
import sys
import types

import pytest

from midblock.evaluation.evaluate import EvalConfig, evaluate
from midblock.evaluation.generate import DecodeConfig, encode_prompt, generate_vllm
from midblock.models.presets import byte_tokenizer
from tests.conftest import run_cli


class _Out:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=text)]


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class LLM:
        def __init__(self, model, enable_lora=False, seed=0, trust_remote_code=None):
            assert trust_remote_code is False  # never None: vLLM/transformers would decide, or ask
            calls["init"] = dict(model=model, enable_lora=enable_lora, seed=seed)

        def generate(self, prompts, params, lora_request=None):
            calls["prompts"], calls["params"], calls["lora"] = prompts, params, lora_request
            # vLLM stops at the first stop string itself; '\n\n' is also a stop in the arith protocols
            return [_Out(f"The answer is {7 * (i + 1)}.\n\nQuestion: more") for i in range(len(prompts))]

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.lora_id, self.path = name, lora_id, path

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora")
    req_mod = types.ModuleType("vllm.lora.request")
    req_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora_mod)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", req_mod)
    return calls


def test_generate_vllm_sends_token_ids_greedy_settings_and_the_adapter(fake_vllm):
    tok = byte_tokenizer()
    prompts = ["Question: 1+1?\nAnswer:", "Question: 2+2?\nAnswer:"]
    cfg = DecodeConfig(max_new_tokens=32, stop=("Question:",), progress=False)
    out = generate_vllm("/models/base", tok, prompts, cfg, adapter="/runs/lora/adapter")
    assert out == ["The answer is 7.\n\n", "The answer is 14.\n\n"]  # cut at the stop string
    assert [p["prompt_token_ids"] for p in fake_vllm["prompts"]] == [encode_prompt(tok, p) for p in prompts]
    params = fake_vllm["params"]
    assert params.temperature == 0.0 and params.max_tokens == 32 and params.stop == ["Question:"]
    assert fake_vllm["init"] == {"model": "/models/base", "enable_lora": True, "seed": 0}
    assert fake_vllm["lora"].path == "/runs/lora/adapter"


def test_evaluate_with_the_vllm_backend_scores_and_writes_items(fake_vllm, tmp_path):
    cfg = EvalConfig(task="arith", protocol="original", eval_items=3, backend="vllm")
    res = evaluate("random:llama-tiny", cfg, out=tmp_path / "ev", progress=False)
    assert res["n"] == 3 and fake_vllm["lora"] is None
    lines = [json.loads(x) for x in (tmp_path / "ev" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all("Question:" not in r["completion"] for r in lines)
    assert (tmp_path / "ev" / "summary.json").exists()


def test_vllm_backend_without_vllm_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    rc, out, err = run_cli(
        "eval",
        "--model",
        "random:llama-tiny",
        "--task",
        "arith",
        "--eval-items",
        "2",
        "--backend",
        "vllm",
        "--out",
        str(tmp_path / "e"),
    )
    assert rc == 2 and "needs vLLM" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e" / "summary.json").exists()
