"""evaluate/evaluate_model end to end on tiny models: outputs, scoring plumbing, resume after a kill."""

import importlib
import json
import random

import pytest

from midblock.errors import MidblockError
from midblock.evaluation.evaluate import EvalConfig, evaluate, evaluate_model
from midblock.evaluation.prompts import fewshot_prompt, sample_exemplars
from midblock.evaluation.stats import wilson_interval
from midblock.io import read_jsonl_tolerant

ev = importlib.import_module("midblock.evaluation.evaluate")  # the module (the package exports the function)


def test_lm_eval_prompts_are_the_five_shot_format():
    from midblock.data import load_rows

    cfg = EvalConfig(task="arith", eval_items=2, offset=3)
    items = ev.load_test_items(cfg)
    assert [it["index"] for it in items] == [3, 4]
    prompts = ev.build_prompts(cfg, items, tokenizer=None)
    train = load_rows("arith", "train")
    # by default the harness's draws: item k gets the (k+1)-th draw of one Random(1234) generator
    assert cfg.fewshot_sampling == "lm-eval"
    rng = random.Random(1234)
    draws = [rng.sample(train, 5) for _ in range(5)]
    assert prompts == [fewshot_prompt(it["question"], draws[it["index"]]) for it in items]
    fixed = ev.build_prompts(EvalConfig(task="arith", fewshot_sampling="fixed"), items, None)
    assert fixed == [fewshot_prompt(it["question"], draws[0]) for it in items]  # one shared draw
    per_item = ev.build_prompts(EvalConfig(task="arith", fewshot_sampling="per-item"), items, None)
    assert per_item[0] == fewshot_prompt(items[0]["question"], sample_exemplars(train, 3, 5, 1234, "per-item"))
    assert per_item[0].split("Question: ")[1] != per_item[1].split("Question: ")[1]
    assert prompts[0].count("Question: ") == 6 and prompts[0].endswith(f"Question: {items[0]['question']}\nAnswer:")
    assert prompts[0].count("\n\nQuestion: ") == 5
    # the same item gets the same prompt whatever the offset
    assert ev.build_prompts(EvalConfig(task="arith", eval_items=1, offset=3), items[:1], None) == prompts[:1]


def _model(preset: str = "llama-tiny"):
    """A real (tiny) model and tokenizer: decoding is faked, but results are keyed on the model's tensors."""
    from midblock.models import load_model

    return load_model(f"random:{preset}")


def _fake_generator(monkeypatch, answer_for):
    """Replace decoding by completions that answer item i as answer_for(i, gold); record what was asked."""
    asked = []

    def fake(model, tok, prompts, cfg, on_result=None):
        out = []
        for i, p in enumerate(prompts):
            q = p.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
            gold = QUESTIONS[q]
            asked.append(q)
            out.append(answer_for(len(asked) - 1, gold))
            if on_result:
                on_result(i, out[-1])
        return out

    monkeypatch.setattr(ev, "generate_completions", fake)
    return asked


QUESTIONS = {}


@pytest.fixture(autouse=True)
def _questions():
    from midblock.data import load_rows

    for r in load_rows("arith", "test", limit=40):
        QUESTIONS[r["question"]] = r["answer"].split("####")[-1].strip()


def test_scores_and_intervals_from_known_completions(monkeypatch, tmp_path):
    # every third item answered right in the '#### N' format, the others with a wrong number
    _fake_generator(monkeypatch, lambda k, g: f" So.\n#### {g}" if k % 3 == 0 else f" It is {int(g) + 1}.")
    s = evaluate_model(
        *_model(), EvalConfig(task="arith", protocol="paper", eval_items=12), out=tmp_path / "e", progress=False
    )
    k = sum(1 for r in s["items"] if r["scores"]["strict-match"]["correct"])
    assert k == 4 and s["n"] == 12
    assert s["scores"]["strict-match"]["accuracy"] == pytest.approx(4 / 12)
    assert (s["scores"]["strict-match"]["ci_low"], s["scores"]["strict-match"]["ci_high"]) == wilson_interval(4, 12)
    assert s["scores"]["paper"]["correct"] == 4 and s["primary"] == ["paper"]
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["scores"] == s["scores"] and "items" not in saved
    assert saved["provenance"]["config"]["protocol"] == "paper" and "torch" in saved["provenance"]["versions"]
    rows = read_jsonl_tolerant(tmp_path / "e" / "items.jsonl")
    assert [r["index"] for r in sorted(rows, key=lambda r: r["index"])] == list(range(12))
    assert {"prompt", "completion", "gold", "scores"} <= set(rows[0])


def test_resume_after_a_kill_generates_only_missing_items(monkeypatch, tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def dying(k, g):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # killed while generating item 6
        return f"#### {g}"

    _fake_generator(monkeypatch, dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(*_model(), EvalConfig(task="arith", protocol="original", eval_items=10), out=out, progress=False)
    assert not (out / "summary.json").exists()
    with open(out / "items.jsonl", "a") as f:
        f.write('{"index": 7, "protoc')  # a line torn by the kill
    assert len(read_jsonl_tolerant(out / "items.jsonl")) == 5
    asked = _fake_generator(monkeypatch, lambda k, g: f"#### {g}")
    s = evaluate_model(*_model(), EvalConfig(task="arith", protocol="original", eval_items=10), out=out, progress=False)
    assert len(asked) == 5 and s["generated_now"] == 5
    assert s["n"] == 10 and s["scores"]["original"]["correct"] == 10
    assert len(read_jsonl_tolerant(out / "items.jsonl")) == 10
    # a third run has nothing left to do
    asked = _fake_generator(monkeypatch, lambda k, g: "#### 0")
    assert (
        evaluate_model(
            *_model(), EvalConfig(task="arith", protocol="original", eval_items=10), out=out, progress=False
        )["scores"]["original"]["correct"]
        == 10
        and asked == []
    )
    # a different protocol in the same directory is refused, not mixed in
    with pytest.raises(MidblockError, match="different settings.protocol"):
        evaluate_model(*_model(), EvalConfig(task="arith", protocol="lm-eval", eval_items=10), out=out, progress=False)


def test_evaluate_real_tiny_model_end_to_end(tmp_path):
    cfg = EvalConfig(task="arith", protocol="paper", eval_items=3, max_new_tokens=8, batch_size=2)
    s = evaluate("random:llama-tiny", cfg, out=tmp_path / "t", progress=False)
    assert s["n"] == 3 and s["model"] == "random:llama-tiny" and s["max_new_tokens"] == 8
    assert s["items_per_s"] > 0 and s["wall_s"] > 0
    assert len(read_jsonl_tolerant(tmp_path / "t" / "items.jsonl")) == 3


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(task="mmlu"), "unknown task"),
        (dict(protocol="harness"), "unknown protocol"),
        (dict(eval_items=0), "--eval-items must be >= 1"),
        (dict(offset=10_000), "past the end"),
        (dict(backend="tgi"), "unknown backend"),
    ],
)
def test_bad_input_fails_before_loading_or_writing(kw, match, tmp_path):
    with pytest.raises(MidblockError, match=match):
        evaluate("random:llama-tiny", EvalConfig(**({"task": "arith"} | kw)), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_chat_template_prompts(tokenizer):
    cfg = EvalConfig(task="arith", eval_items=1, chat_template=True, num_fewshot=1)
    items = ev.load_test_items(cfg)
    (p,) = ev.build_prompts(cfg, items, tokenizer)
    assert p.startswith("<|im_start|>user\n") and p.endswith("<|im_start|>assistant\n")
    assert p.count("<|im_start|>user") == 2 and items[0]["question"] in p and "#### N" in p
