"""Differential test against the real lm-evaluation-harness (the ``harness`` extra): its ``gsm8k`` task, built
offline from the local GSM8K copy and run through ``lm_eval.simple_evaluate`` with a model that records what it
is asked and answers canned completions. midblock's ``lm-eval`` protocol must give the same prompts byte for
byte (test rows 0-7, and an ``offset=5, eval_items=3`` run against the harness's documents 5-7), the same stop
strings, greedy decoding and token limit, and the same strict-match / flexible-extract scores.

Skips, with the reason, where lm-eval or the local GSM8K copy is absent."""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")

from midblock.evaluation import EvalConfig  # noqa: E402
from midblock.evaluation import prompts as mp  # noqa: E402
from midblock.evaluation.extract import score_all  # noqa: E402
from midblock.evaluation.generate import truncate_at_stops  # noqa: E402

ev = importlib.import_module("midblock.evaluation.evaluate")

N_DOCS = 8


def _completion(doc_id: int, gold: str) -> str:
    """Completions that exercise the two filters and exact_match's normalisation (one per test row)."""
    g = gold.split("####")[-1].strip()
    return [
        f"So she makes {g} dollars.\n#### {g}",
        f"The answer is {g}.",  # no '####': strict-match invalid, flexible-extract takes '{g}.'
        f"#### {g}.0",  # '18.0' is not '18'
        f"#### ${g}.",  # strict-match needs a digit after '#### '; flexible keeps '$', exact_match drops it
        "I do not know.",
        f"{g} apples and 7 pears",  # flexible-extract takes the last number
        f"#### {g}\n#### 3",  # strict-match takes the first
        f"#### -{g},",
    ][doc_id % 8]


def _gsm8k_task(data: Path, cache_dir: Path):
    """The harness's own gsm8k task config (its YAML, unchanged but for where the data come from)."""
    import yaml
    from lm_eval.api.task import ConfigurableTask

    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    assert (cfg["dataset_path"], cfg["test_split"], cfg["fewshot_split"]) == ("openai/gsm8k", "test", "train")
    files = {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")}
    cfg.update(
        dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files, "cache_dir": str(cache_dir)}
    )
    return ConfigurableTask(config=cfg)


@pytest.fixture(scope="module")
def harness(gsm8k_path, tmp_path_factory):
    """One harness run over test documents 0-7: the requests ({doc_id: (prompt, gen kwargs)}), the logged
    samples (each filter's extraction and exact_match per document) and the task."""
    import numpy as np
    import torch
    from lm_eval import evaluator
    from lm_eval.api.model import LM

    class Recorder(LM):
        def __init__(self):
            super().__init__()
            self.requests = {}

        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for r in requests:
                self.requests[r.doc_id] = r.args
                out.append(_completion(r.doc_id, r.doc["answer"]))
            return out

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    try:  # only our task: indexing the ~14k built-in task files takes seconds
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_defaults=False)
    except (ImportError, TypeError):
        manager = None
    task = _gsm8k_task(gsm8k_path, tmp_path_factory.mktemp("hf-datasets"))
    lm = Recorder()
    # simple_evaluate seeds python, numpy and torch globally: give the other tests their state back
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        res = evaluator.simple_evaluate(model=lm, tasks=[task], limit=N_DOCS, log_samples=True, task_manager=manager)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
    assert sorted(lm.requests) == list(range(N_DOCS))
    return {"requests": lm.requests, "samples": res["samples"][task.config.task], "task": task}


def _midblock_prompts(data: Path, **kw) -> list[str]:
    cfg = EvalConfig(task="gsm8k", protocol="lm-eval", data=str(data), **kw)
    assert cfg.fewshot_sampling == "lm-eval"  # the protocol's default
    return ev.build_prompts(cfg, ev.load_test_items(cfg), tokenizer=None)


def test_prompts_equal_the_harness_rows_0_to_7(harness, gsm8k_path):
    mp._DRAWS.clear()
    ours = _midblock_prompts(gsm8k_path, eval_items=N_DOCS)
    theirs = [harness["requests"][k][0] for k in range(N_DOCS)]
    for k in range(N_DOCS):
        assert ours[k] == theirs[k], f"test row {k}: midblock's prompt differs from lm-eval's"
    assert len(set(theirs)) == N_DOCS and theirs[0].count("Question: ") == 6  # five shots, a new draw per row


def test_offset_run_gets_the_harness_prompts_of_its_documents(harness, gsm8k_path):
    """``--offset 5 --eval-items 3``: items 5, 6, 7 get the harness's prompts for documents 5, 6, 7 (its 6th-8th
    draws), however the draw cache was filled before (empty, or by a later item first)."""
    theirs = [harness["requests"][k][0] for k in (5, 6, 7)]
    mp._DRAWS.clear()
    assert _midblock_prompts(gsm8k_path, offset=5, eval_items=3) == theirs
    mp._DRAWS.clear()
    _midblock_prompts(gsm8k_path, offset=7, eval_items=1)
    assert _midblock_prompts(gsm8k_path, offset=5, eval_items=3) == theirs
    one_by_one = [_midblock_prompts(gsm8k_path, offset=k, eval_items=1)[0] for k in (7, 5, 6)]
    assert one_by_one == [theirs[2], theirs[0], theirs[1]]


def test_other_sampling_modes_are_not_the_harness(harness, gsm8k_path):
    theirs = [harness["requests"][k][0] for k in range(3)]
    fixed = _prompts_with(gsm8k_path, "fixed")
    assert fixed[0] == theirs[0] and fixed[1:] != theirs[1:]  # the shared draw is the harness's first
    assert _prompts_with(gsm8k_path, "per-item") != theirs


def _prompts_with(data: Path, sampling: str) -> list[str]:
    cfg = EvalConfig(task="gsm8k", data=str(data), eval_items=3, fewshot_sampling=sampling)
    return ev.build_prompts(cfg, ev.load_test_items(cfg), tokenizer=None)


def test_decoding_settings_equal_the_harness(harness):
    gen_kwargs = harness["requests"][0][1]
    spec = ev.PROTOCOLS["lm-eval"]
    assert tuple(gen_kwargs["until"]) == spec.stop  # the model's EOS is added by both
    assert gen_kwargs.get("do_sample") is False  # greedy
    assert harness["task"].config.num_fewshot == spec.num_fewshot
    from lm_eval.models.huggingface import HFLM

    assert HFLM.max_gen_toks.fget(None) == spec.max_new_tokens  # the harness's default token limit
    try:
        from lm_eval.models.utils import postprocess_generated_text
    except ImportError:  # older 0.4.x: the same loop inline in HFLM.generate_until
        return
    for text in ("a\n\nQuestion: b", "x</s>y<|im_end|>z", "Question:Question:", "no stop", "<|im_end|>Question:"):
        assert truncate_at_stops(text, spec.stop) == postprocess_generated_text(text, list(spec.stop), None)


def test_scores_equal_the_harness(harness, gsm8k_path):
    """The harness's own filters and exact_match on the canned completions, per row and filter."""
    from midblock.data import load_rows

    gold = load_rows("gsm8k", "test", str(gsm8k_path), limit=N_DOCS)
    seen = set()
    for s in harness["samples"]:
        k, name = s["doc_id"], s["filter"]
        ours = score_all(_completion(k, gold[k]["answer"]), gold[k]["answer"])[name]
        assert bool(s["exact_match"]) == ours["correct"], (k, name, s["filtered_resps"], ours)
        assert s["filtered_resps"] == [ours["pred"]], (k, name)
        seen.add((k, name))
    assert seen == {(k, f) for k in range(N_DOCS) for f in ("strict-match", "flexible-extract")}
