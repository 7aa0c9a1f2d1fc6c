"""``midblock layers MODEL --band SPEC``: which blocks a band selects, and what they hold."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "layers", help="show the blocks a band spec selects", doc=__doc__)
    p.add_argument("model", help="model spec (smollm2-135m, random:<preset>, a directory, a hub id...)")
    p.add_argument("--band", default="all", help="layer spec: all, 0.2:0.8, 6-23, 3,5,7, first:N, last:N, seg2-4/5")
    common_args(p, seed=False, out=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.errors import MidblockError
    from midblock.layers import format_indices, resolve_layers
    from midblock.models.skeleton import load_skeleton
    from midblock.selection import split_spec

    strategy, _ = split_spec(args.band)
    if strategy.name != "band":  # auto, spectrum, cka-select, lisa: decided by weights, data or the seed
        raise MidblockError(
            f"'{args.band}' is a selection strategy: its blocks depend on the weights, data or seed",
            hint="midblock train prints what it selected (the 'selection' of its summary)",
        )
    model = load_skeleton(args.model)
    from midblock.models.introspect import get_layout

    lay = get_layout(model)
    L = lay.num_layers
    idx = resolve_layers(args.band, L)
    print(f"model: {args.model} ({type(model).__name__}), {L} blocks at {lay.blocks_path}")
    print(f"band {args.band!r}: {len(idx)} blocks, {format_indices(idx).replace('-', '..')}")
    for i in idx:
        print(f"  block {i:3d}  depth {(i + 0.5) / L:.3f}  [{i / L:.3f}, {(i + 1) / L:.3f})")
    print(f"attention modules: {', '.join(lay.attn_linears)}")
    print(f"MLP modules:       {', '.join(lay.mlp_linears)}")
    if lay.other_linears:
        print(f"other modules:     {', '.join(lay.other_linears)}")
    print(
        f"embedding: {type(lay.embedding).__name__}; final norm: {lay.final_norm_path}; "
        f"LM head: {type(lay.lm_head).__name__}"
    )
    return 0
