"""CKA-select: the ranking equals linear CKA computed directly from the model's own hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midblock.errors import MidblockError
from midblock.models.introspect import get_layout
from midblock.selection import select
from midblock.selection.cka import CkaSelect, lowest


def _linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def _direct_states(model, seqs):
    """Each sample alone (no padding): the last token's state at the input of block 0 and after every block."""
    lay = get_layout(model)
    L = lay.num_layers
    rows = [[] for _ in range(L + 1)]
    outs: dict[int, torch.Tensor] = {}
    for s in seqs:
        outs.clear()
        hooks = [
            blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i, blk in enumerate(lay.blocks)
        ]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
        for h in hooks:
            h.remove()
        rows[0].append(hs[0][0, -1].double().numpy())  # the embedding output
        for i in range(L):  # the blocks' own outputs (hidden_states[-1] is after the final norm)
            o = outs[i][0] if isinstance(outs[i], tuple) else outs[i]
            rows[i + 1].append(o[0, -1].double().numpy())
    return [np.stack(r) for r in rows]


def _seqs(n=24, vocab=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, vocab, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]


@pytest.mark.parametrize("fraction", [0.34, 0.5, 1.0])
def test_ranking_equals_cka_computed_directly(tiny, fraction):
    model, _ = tiny("llama-tiny")
    seqs = _seqs()
    st = _direct_states(model, seqs)
    direct = [_linear_cka(st[i], st[i + 1]) for i in range(len(st) - 1)]
    sel = select(f"cka-select:{fraction}", get_layout(model), model=model, data=seqs)
    assert sel.details["cka"] == pytest.approx(
        direct, abs=1e-5
    )  # rounded to 6 digits  # padded batches give the unpadded states
    k = max(1, round(fraction * 6))
    assert sel.blocks == sorted(sorted(range(6), key=lambda b: direct[b])[:k])
    assert sel.details["samples"] == len(seqs)


def test_only_the_first_128_samples_are_used(tiny):
    model, _ = tiny("llama-tiny")
    seqs = _seqs(n=130)
    sel = select("cka-select:0.5", get_layout(model), model=model, data=seqs)
    same = select("cka-select:0.5", get_layout(model), model=model, data=seqs[:128])
    assert sel.details["samples"] == 128 and sel.details["cka"] == same.details["cka"]


def test_a_block_whose_input_never_varies_has_no_cka_and_ranks_last(tiny):
    """Every sample ending in the same token (EOS) gives block 0 identical input states: CKA is undefined."""
    model, _ = tiny("llama-tiny")
    seqs = [s + [2] for s in _seqs()]
    sel = select("cka-select:1.0", get_layout(model), model=model, data=seqs)
    assert sel.details["cka"][0] is None
    assert lowest(sel.details["cka"], 5 / 6) == [1, 2, 3, 4, 5]


def test_lowest_rounds_the_count_and_keeps_at_least_one():
    assert lowest([0.9, 0.1, 0.5, 0.2], 0.5) == [1, 3]
    assert lowest([0.9, 0.1, 0.5, 0.2], 0.01) == [1]
    assert lowest([0.3, 0.3, 0.1], 0.67) == [0, 2]  # tie: the lower block


def test_without_data_it_says_what_to_pass(tiny):
    model, _ = tiny("llama-tiny")
    with pytest.raises(MidblockError, match="needs data"):
        select("cka-select:0.5", get_layout(model), model=model)


@pytest.mark.parametrize("arg", ["", "0", "1.5", "half"])
def test_bad_fractions_are_one_line_errors(arg):
    with pytest.raises(MidblockError, match="cka-select"):
        CkaSelect().parse(arg)
