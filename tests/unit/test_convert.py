"""`to_transformer_lens()`: TransformerLens's own object (HookedTransformer on 3.x,
TransformerBridge on 4.x), same logits."""

import pytest
import torch

from tlassoc import AssocConfig, AssocTransformer, presets
from tlassoc._tl import TL_MAJOR

CONFIGS = {
    "ape": presets.ape(d_model=32, n_ctx=48),
    "nope": presets.nope(d_model=32, n_ctx=48),
    "relu+LN+heads": AssocConfig(
        d_model=32, n_heads=4, n_ctx=48, ffn_type="relu", normalization_type="LN"
    ),
    "linear ffn in layer 0": AssocConfig(
        d_model=32, n_heads=2, n_ctx=48, ffn_type="linear", ffn_layers=(0,)
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformer_lens_copy_has_the_same_logits(name):
    model = AssocTransformer(CONFIGS[name]).eval()
    with torch.no_grad():  # move away from init so every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    tl_model = model.to_transformer_lens()
    expected = "HookedTransformer" if TL_MAJOR < 4 else "TransformerBridge"
    assert type(tl_model).__name__ == expected
    toks = torch.randint(0, 65, (3, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tl_model(toks), model(toks), rtol=0, atol=1e-5)


def test_copy_tokenizes_like_the_model():
    model = AssocTransformer(presets.ape(d_model=16, n_ctx=16))
    tl_model = model.to_transformer_lens()
    assert torch.equal(tl_model.to_tokens("To be", prepend_bos=False), model.to_tokens("To be"))


def test_relative_positions_cannot_be_converted():
    with pytest.raises(
        ValueError, match="positional_embedding_type='relative' cannot be expressed"
    ):
        AssocTransformer(presets.rpe(d_model=16, n_ctx=16)).to_transformer_lens()


def _imports(path):
    """``(module, at_module_level)`` for every import statement of a source file."""
    import ast

    tree = ast.parse(open(path).read())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
    return out


def test_model_and_convert_import_one_way():
    """model.py imports convert.py lazily (inside to_transformer_lens); convert.py never imports
    model.py, neither at module level nor inside a function."""
    import tlassoc.convert
    import tlassoc.model

    convert_imports = [m for m, _ in _imports(tlassoc.convert.__file__)]
    assert not any(m == "tlassoc.model" or m.startswith("tlassoc.model.") for m in convert_imports)
    model_imports = _imports(tlassoc.model.__file__)
    assert ("tlassoc.convert", False) in model_imports
    assert ("tlassoc.convert", True) not in model_imports
