import pytest
import torch

from tlassoc import AssocConfig, presets


def test_defaults_follow_hooked_transformer_names():
    cfg = AssocConfig(d_model=64, n_heads=4)
    assert (cfg.d_head, cfg.n_layers, cfg.d_vocab, cfg.attn_only) == (16, 2, 65, True)
    assert cfg.n_key_value_heads is None and cfg.default_prepend_bos is False


def test_ffn_defaults():
    lin = AssocConfig(ffn_type="linear")
    relu = AssocConfig(ffn_type="relu", ffn_layers=(0, 1))
    assert (lin.ffn_layers, lin.d_mlp, lin.attn_only) == ((1,), 128, False)
    assert (relu.ffn_layers, relu.d_mlp) == ((0, 1), 512)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_layers": 0}, "n_layers=0"),
        ({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
        ({"positional_embedding_type": "sinusoidal"}, "positional_embedding_type='sinusoidal'"),
        ({"positional_embedding_type": "relative", "relative_layers": (2,)}, "relative_layers"),
        ({"relative_form": "table"}, "relative_form='table'"),
        ({"ffn_type": "gelu"}, "ffn_type='gelu'"),
        ({"ffn_layers": (1,)}, "ffn_type is None"),
        ({"identity_query": True, "n_heads": 2}, "identity_query=True needs d_head == d_model"),
        ({"normalization_type": "RMS"}, "normalization_type='RMS'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"max_relative_distance": -1}, "max_relative_distance=-1"),
        ({"frozen": (3,)}, "frozen"),
    ],
)
def test_inconsistent_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AssocConfig(**kwargs)


def test_dict_round_trip_and_replace():
    cfg = presets.rpe(d_model=32, dtype=torch.float64, relative_form="bias")
    again = AssocConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.replace(d_model=16).d_model == 16
    with pytest.raises(ValueError, match="unknown AssocConfig field"):
        AssocConfig.from_dict({**cfg.to_dict(), "d_modle": 3})


def test_presets():
    assert presets.rpe().positional_embedding_type == "relative"
    assert presets.ape().positional_embedding_type == "standard"
    assert presets.nope().n_layers == 3 and presets.nope().positional_embedding_type == "none"
    b = presets.bietti_simplified()
    assert b.d_model == 256 and b.identity_query and "blocks.1.attn.W_V" in b.frozen
