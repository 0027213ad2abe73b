"""A one-minute tour, run by ``python -m tlassoc.quickstart``: build the RPE and APE models, run a
prompt with a cache, and patch the previous-token head with TransformerLens's own patching.

Example:
    >>> from tlassoc.quickstart import main
    >>> main(["--out", __import__("tempfile").mkdtemp()])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformer_lens import patching

from tlassoc import AssocTransformer, presets
from tlassoc.viz.attention import save_attention_html

PROMPT = "First Citizen: Before we proceed any further, hear me speak. First Citizen: Before"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tlassoc quickstart")
    parser.add_argument("--out", default="results/quickstart", help="folder for the HTML views")
    args = parser.parse_args(argv)
    out = Path(args.out)

    for cfg in (presets.rpe(), presets.ape()):
        model = AssocTransformer(cfg).eval()
        tokens = model.to_tokens(PROMPT)
        logits, cache = model.run_with_cache(tokens)
        print(
            f"{cfg.model_name}: {sum(p.numel() for p in model.parameters())} parameters, "
            f"trainable {model.trainable_parameter_names()}"
        )
        print(
            f"  logits {tuple(logits.shape)}, {len(cache)} cached activations, "
            f"layer-0 pattern {tuple(cache['pattern', 0].shape)}"
        )
        corrupted = tokens.roll(1, dims=1)

        def metric(patched_logits: torch.Tensor, answer: int = int(tokens[0, -1])) -> torch.Tensor:
            return patched_logits[0, -1].log_softmax(-1)[answer]

        effect = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
        print(f"  head-output patching effect per (layer, head): {effect.flatten().tolist()}")
        path = out / f"{cfg.model_name}_attention.html"
        save_attention_html(model, tokens[0], path)
        print(f"  attention of both layers -> {path}")
    print("Untrained models: train them with `tlassoc reproduce` or tlassoc.train(...).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
