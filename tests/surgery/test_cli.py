"""The four commands end to end on tiny models: outputs, reference rows, resume, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from midblock.models import load_model
from tests.conftest import run_cli
from tests.surgery.conftest import perturb_blocks, write_delta_run

CORPUS = (
    "Question: what is 2 + 3?\nAnswer: 5\n\nThe quick brown fox jumps over the lazy dog.\n\nAnother line of text.\n"
)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS)
    return str(p)


def read_csv(path):
    return list(csv.DictReader(open(path)))


def test_swap_segments_reference_rows_and_resume(pair, corpus, tmp_path, monkeypatch):
    _, _, _, tmp = pair
    out = tmp_path / "swap"
    argv = [
        "swap",
        "--base",
        str(tmp / "base"),
        "--variant",
        str(tmp / "variant"),
        "--segments",
        "3",
        "--corpus",
        corpus,
        "--out",
        str(out),
    ]
    rc, stdout, err = run_cli(*argv)
    assert rc == 0, err
    rows = read_csv(out / "swap.csv")
    assert [r["config"] for r in rows] == ["base", "variant", "seg1/3", "seg2/3", "seg3/3"]
    assert [r["blocks"] for r in rows[2:]] == ["0-1", "2-3", "4-5"]
    # Reference rows equal the models' own corpus loss, computed independently.
    from midblock.evaluation.ppl import load_texts, token_loss

    texts = load_texts(corpus)
    for name in ("base", "variant"):
        m, tok = load_model(str(tmp / name))
        want = token_loss(m, tok, texts, batch_size=8, max_length=512)["loss"]
        assert float(rows[0 if name == "base" else 1]["loss"]) == pytest.approx(want, rel=1e-6)
    data = json.loads((out / "swap.json").read_text())
    assert data["provenance"]["config"]["segments"] == 3 and data["provenance"]["versions"]["torch"]
    assert (out / "swap.png").exists() and "Layer swapping" in (out / "report.html").read_text()
    # Resume: a rerun measures nothing new.
    import midblock.surgery.swap as swap_mod

    calls = []
    real = swap_mod.Patch.__enter__
    monkeypatch.setattr(swap_mod.Patch, "__enter__", lambda self: calls.append(1) or real(self))
    rc, _, err = run_cli(*argv)
    assert rc == 0 and calls == []
    # Drop the last finished configuration: only it is measured again.
    lines = (out / "swap_results.jsonl").read_text().splitlines()
    (out / "swap_results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # torn last line
    rc, _, err = run_cli(*argv)
    assert rc == 0 and len(calls) == 1
    assert read_csv(out / "swap.csv")[-1]["loss"] == rows[-1]["loss"]
    rc, _, err = run_cli(*argv)  # the torn line was repaired: nothing is measured again
    assert rc == 0 and len(calls) == 1
    assert len((out / "swap_results.jsonl").read_text().splitlines()) == 5
    # A different grid in the same directory is refused.
    rc, _, err = run_cli(*argv[:5], "--bands", "0-2", "--corpus", corpus, "--out", str(out))
    assert rc == 2 and "swap run made with a different settings." in err
    # So is the same grid over a variant whose weights changed in place (same path, other file contents).
    var, _ = load_model(str(tmp / "variant"))
    perturb_blocks(var, [0])
    var.save_pretrained(tmp / "variant")
    rc, _, err = run_cli(*argv)
    assert rc == 2 and "swap run made with a different models." in err and len(calls) == 1


def test_swap_into_variant_with_head_and_task(pair, tmp_path):
    _, _, _, tmp = pair
    run = write_delta_run(tmp, tmp / "base", load_model(str(tmp / "variant"))[0], blocks=[2, 3])
    out = tmp_path / "sw2"
    rc, _, err = run_cli(
        "swap",
        "--base",
        str(tmp / "base"),
        "--variant",
        run,
        "--bands",
        "2-3",
        "last:1",
        "--with-head",
        "--direction",
        "into-variant",
        "--task",
        "arith",
        "--eval-items",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    )
    assert rc == 0, err
    rows = read_csv(out / "swap.csv")
    assert [r["config"] for r in rows] == ["base", "variant", "band 2-3+head", "band last:1+head"]
    assert rows[2]["direction"] == "into-variant" and rows[2]["with_head"] == "True"
    for r in rows:
        assert 0.0 <= float(r["acc_original_lo"]) <= float(r["acc_original"]) <= float(r["acc_original_hi"]) <= 1.0
        assert r["n_items"] == "2"


def test_interpolate_weights_and_save(pair, corpus, tmp_path):
    _, _, _, tmp = pair
    out, saved = tmp_path / "interp", tmp_path / "merged"
    rc, stdout, err = run_cli(
        "interpolate",
        "--base",
        str(tmp / "base"),
        "--variant",
        str(tmp / "variant"),
        "--weights",
        "1,1,1",
        "--weights",
        "0,0.5,0",
        "--corpus",
        corpus,
        "--out",
        str(out),
        "--save",
        str(saved),
    )
    assert rc == 0, err
    rows = read_csv(out / "interpolate.csv")
    assert [r["config"] for r in rows] == ["base", "variant", "a=1,1,1", "a=0,0.5,0"]
    assert rows[2]["segment_blocks"] == "0-1;2-3;4-5"
    # The saved model is the a=1,1,1 interpolation: its corpus loss is that row's.
    from midblock.evaluation.ppl import load_texts, token_loss

    m, tok = load_model(str(saved))
    got = token_loss(m, tok, load_texts(corpus), batch_size=8, max_length=512)["loss"]
    assert got == pytest.approx(float(rows[2]["loss"]), rel=1e-6)
    assert (out / "interpolate.png").exists()


def test_early_exit_cli(tmp_path):
    out = tmp_path / "ee"
    rc, stdout, err = run_cli(
        "early-exit",
        "--base",
        "random:llama-tiny",
        "--variant",
        "random:llama-tiny",
        "--task",
        "arith",
        "--samples",
        "3",
        "--max-length",
        "48",
        "--out",
        str(out),
    )
    assert rc == 0, err
    rows = read_csv(out / "early_exit.csv")
    assert len(rows) == 14 and {r["model"] for r in rows} == {"base", "variant"}
    v = [r for r in rows if r["model"] == "variant"]
    assert all(0.0 <= float(r["top1_agreement"]) <= 1.0 for r in v)
    assert all(0.0 < float(r["gold_prob"]) < 1.0 and r["n_probe"] == "3" for r in rows)
    # The base's last layer is the base model's own loss on the same ids.
    from midblock.data import load_examples
    from midblock.data.tasks import encode_prompt as encode

    m, tok = load_model("random:llama-tiny", seed=0)
    total = n = 0
    for ex in load_examples("arith", "test", limit=3):
        ids = torch.tensor([encode(tok, ex.text)[:48]])
        with torch.no_grad():
            lg = m(input_ids=ids).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(lg, ids[0, 1:], reduction="sum").item()
        n += ids.shape[1] - 1
    assert float(rows[6]["loss"]) == pytest.approx(total / n, rel=1e-5)
    assert "Early exit" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["swap", "--base", "random:llama-tiny", "--variant", "random:qwen2-tiny", "--segments", "3"], "differ in"),
        (["swap", "--base", "random:llama-tiny", "--variant", "random:llama-8l", "--segments", "3"], "differ in"),
        (["swap", "--base", "random:llama-tiny", "--variant", "random:llama-tiny", "--segments", "7"], "at most 6"),
        (["swap", "--base", "random:llama-tiny", "--variant", "random:llama-tiny", "--bands", "9-10"], "6 blocks"),
        (
            ["interpolate", "--base", "random:llama-tiny", "--variant", "random:llama-tiny", "--weights", "0,2,0"],
            "leave",
        ),
        (
            [
                "interpolate",
                "--base",
                "random:llama-tiny",
                "--variant",
                "random:llama-tiny",
                "--weights",
                "1,1,1,1,1,1,1",
            ],
            "segments",
        ),
        (["swap", "--base", "random:llama-tiny", "--variant", "random:nope", "--segments", "3"], "unknown random"),
        (["early-exit", "--base", "random:llama-tiny", "--variant", "random:gpt2-tiny"], "differ in"),
    ],
)
def test_bad_input_exit_2_nothing_written(argv, msg, corpus, tmp_path):
    out = tmp_path / "out"
    extra = ["--corpus", corpus] if argv[0] != "early-exit" else ["--task", "arith"]
    rc, stdout, err = run_cli(*argv, *extra, "--out", str(out))
    assert rc == 2, err
    assert msg in err and err.count("\n") == 1
    assert not out.exists()


def test_empty_corpus_and_nothing_to_measure(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    out = tmp_path / "out"
    base = ["swap", "--base", "random:llama-tiny", "--variant", "random:llama-tiny", "--segments", "2"]
    rc, _, err = run_cli(*base, "--corpus", str(empty), "--out", str(out))
    assert rc == 2 and "empty" in err
    rc, _, err = run_cli(*base, "--out", str(out))
    assert rc == 2 and "nothing to measure" in err
    assert not out.exists()
