"""Groups, kept indices and rebuilt weights on a model with every kind of junction (tests/prune/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.prune import rule
from kestrel_trainer.prune.graph import build_graph
from kestrel_trainer.prune.rebuild import group_keep, layout_keep, rebuild
from kestrel_trainer.prune.run import prune_model

from .conftest import spread_filters, toy_model
from .test_rule import ref_combine, ref_keep, ref_normalize, ref_norms

X = np.random.default_rng(3).random((4, 8, 8, 3), dtype=np.float32)
GROUP = ("stem", "body", "dw", "se_expand")


def _kernel(model, name):
    return model.get_layer(name).get_weights()[0]


def _expected(model, normalizer, criterion, opts):
    """Kept indices of each group from the reference functions, reading the kernels directly."""
    def score(name):
        return ref_normalize(ref_norms(_kernel(model, name), depthwise=name == "dw"), normalizer)

    keep = {"group": ref_keep(ref_combine([score(n) for n in GROUP], criterion), *opts)}
    for name in ("se_reduce", "branch_a", "branch_b", "fc"):
        keep[name] = ref_keep(score(name), *opts)
    return keep


@pytest.mark.parametrize("normalizer", rule.NORMALIZERS)
def test_kept_indices_equal_the_reference_and_group_members_agree(normalizer):
    model = toy_model()
    spread_filters(model, seed=11)
    threshold = 0.5 if normalizer != "off" else 0.3
    graph = build_graph(model, normalizer)
    for criterion in rule.CRITERIA:  # the walk depends on the normalizer only; every criterion on the same graph
        opts = rule.PruneOptions(normalizer, criterion, granularity=2, threshold=threshold, min_num_filters=2)
        keep = group_keep(graph, opts)
        expected = _expected(model, normalizer, criterion, (threshold, 2, 2))
        for name in GROUP:
            assert layout_keep(graph.outputs[name], graph, keep).tolist() == expected["group"], (criterion, name)
        for name in ("se_reduce", "branch_a", "branch_b", "fc"):
            assert layout_keep(graph.outputs[name], graph, keep).tolist() == expected[name], (criterion, name)
        assert layout_keep(graph.outputs["predictions"], graph, keep).tolist() == list(range(5))  # output kept

    # The rebuilt weights are the originals at those indices, identical for every member of the group.
    pruned = rebuild(model, graph, keep)
    g, r = expected["group"], expected["se_reduce"]
    a, b = expected["branch_a"], expected["branch_b"]
    np.testing.assert_array_equal(_kernel(pruned, "stem"), _kernel(model, "stem")[..., g])
    np.testing.assert_array_equal(_kernel(pruned, "body"), _kernel(model, "body")[:, :, g, :][..., g])
    np.testing.assert_array_equal(_kernel(pruned, "dw"), _kernel(model, "dw")[:, :, g, :])
    np.testing.assert_array_equal(_kernel(pruned, "se_reduce"), _kernel(model, "se_reduce")[:, :, g, :][..., r])
    np.testing.assert_array_equal(_kernel(pruned, "se_expand"), _kernel(model, "se_expand")[:, :, r, :][..., g])
    # Concatenate: branch_b's channels come after branch_a's 16; Flatten repeats them over the 2x2 positions.
    cat = a + [16 + i for i in b]
    rows = [p * 24 + c for p in range(4) for c in cat]
    np.testing.assert_array_equal(_kernel(pruned, "fc"), _kernel(model, "fc")[rows][:, expected["fc"]])
    assert pruned.get_layer("se_reshape").output_shape == (None, 1, 1, len(g))
    assert pruned(X).shape == (4, 5)


def test_an_excluded_member_keeps_its_whole_group():
    model = toy_model()
    spread_filters(model, seed=5)
    pruned, rows = prune_model(model, rule.PruneOptions(threshold=0.5, min_num_filters=1, granularity=1),
                               excluded=["body"])
    by_name = {r["layer"]: r for r in rows}
    for name in GROUP:
        assert by_name[name]["kept"] == by_name[name]["total"] == 24 and by_name[name]["pinned"]
    assert by_name["branch_a"]["kept"] < 16  # the rest still prunes
    np.testing.assert_array_equal(_kernel(pruned, "stem"), _kernel(model, "stem"))


def test_a_threshold_that_keeps_everything_gives_exactly_the_same_outputs():
    model = toy_model()
    spread_filters(model, seed=2)
    pruned, rows = prune_model(model, rule.PruneOptions(threshold=0.0, min_num_filters=1, granularity=1))
    assert all(r["kept"] == r["total"] for r in rows)
    np.testing.assert_array_equal(pruned(X, training=False).numpy(), model(X, training=False).numpy())
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]


def test_pruning_filters_that_are_exactly_zero_changes_nothing():
    model = toy_model()
    spread_filters(model, seed=9, power=1.0)
    rng = np.random.default_rng(0)
    dead = {"group": rng.choice(24, 9, replace=False), "branch_a": rng.choice(16, 5, replace=False),
            "fc": rng.choice(12, 4, replace=False)}
    for name, idx in [*((n, dead["group"]) for n in GROUP), ("branch_a", dead["branch_a"]), ("fc", dead["fc"])]:
        w = model.get_layer(name).get_weights()
        if name == "dw":
            w[0][:, :, idx, :] = 0
        else:
            w[0][..., idx] = 0
        w[1][idx] = 0
        model.get_layer(name).set_weights(w)
    pruned, rows = prune_model(model, rule.PruneOptions(threshold=0.0, min_num_filters=1, granularity=1))
    kept = {r["layer"]: r["kept"] for r in rows}
    assert kept["stem"] == 15 and kept["branch_a"] == 11 and kept["fc"] == 8
    np.testing.assert_allclose(pruned(X, training=False).numpy(), model(X, training=False).numpy(), atol=1e-5)
    assert pruned.count_params() < model.count_params()


def test_unknown_layers_keep_what_they_touch():
    inp = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(32, 3, name="c1")(inp)
    y = x[..., 16:]  # a TFOpLambda slice: pruning c1 would change what it selects
    z = tf.keras.layers.Conv2D(32, 1, name="c2")(y)
    out = tf.keras.layers.Dense(3, name="predictions")(tf.keras.layers.GlobalAveragePooling2D()(z))
    model = tf.keras.Model(inp, out)
    spread_filters(model)
    pruned, rows = prune_model(model, rule.PruneOptions(threshold=0.5, min_num_filters=1, granularity=1))
    by_name = {r["layer"]: r for r in rows}
    assert by_name["c1"]["kept"] == 32 and by_name["c1"]["pinned"]
    assert by_name["c2"]["kept"] < 32
    assert pruned(X).shape == (4, 3)


def test_a_channels_first_model_is_refused_not_misread():
    from kestrel_trainer.prune.run import PruneError

    inp = tf.keras.Input((3, 8, 8))
    x = tf.keras.layers.Conv2D(16, 3, data_format="channels_first", name="c1")(inp)
    out = tf.keras.layers.Dense(2, name="predictions")(tf.keras.layers.Flatten()(x))
    with pytest.raises(PruneError, match="c1 is channels_first"):
        prune_model(tf.keras.Model(inp, out), rule.PruneOptions())
