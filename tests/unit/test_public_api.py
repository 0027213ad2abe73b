"""The everyday names of DESIGN.md are importable from the top level."""

import tlassoc


def test_top_level_names():
    for name in (
        "AssocConfig",
        "AssocTransformer",
        "TriggerBigramTask",
        "BigramModel",
        "AnalogyTask",
        "TrainConfig",
        "HubUnavailableError",
        "one_step_train",
        "presets",
        "CharTokenizer",
        "WordTokenizer",
    ):
        assert hasattr(tlassoc, name), name
    assert issubclass(tlassoc.HubUnavailableError, Exception)


def test_train_is_callable_and_still_the_module():
    from tlassoc.data import BigramModel

    assert tlassoc.train.TrainConfig is tlassoc.TrainConfig
    model = tlassoc.AssocTransformer(tlassoc.presets.rpe(d_model=16, n_ctx=32))
    task = tlassoc.TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
    result = tlassoc.train(
        model,
        task,
        tlassoc.TrainConfig.simplified(steps=2, batch_size=4, progress=False, probes=False),
    )
    assert result.step == 2 and len(result.losses) == 2
