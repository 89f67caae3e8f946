"""Every (arch, n_layers) builds, runs forward on RGB and grayscale input and trains one step on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.models.registry import create_model, family_of, get_entry, list_archs
from kestrel_trainer.spec.types import ALL_ARCHS

from .specs import ALL_VARIANTS, make_spec


def _id(v):
    return f"{v[0]}{v[1] or ''}"


# The train step runs in graph mode, as training does, for the first variant of each arch (efficientnet_b0 for
# the efficientnets); the deeper variants repeat the same blocks, so theirs runs eagerly: tracing and optimising
# the training graph of efficientnet_b7 or resnet200 takes 40-60 s on 2 cores, an eager step 5-7 s.
def _block_kind(arch: str) -> str:
    return family_of(arch) if family_of(arch) == "efficientnet" else arch


GRAPH_MODE = {v for i, v in enumerate(ALL_VARIANTS)
              if _block_kind(v[0]) not in {_block_kind(a) for a, _ in ALL_VARIANTS[:i]}}


def test_registry_covers_every_arch_of_the_spec():
    assert sorted(ALL_ARCHS) == list_archs()
    assert {family_of(a) for a in ALL_ARCHS} == {
        "resnet", "vgg", "alexnet", "googlenet", "mobilenet", "squeezenet", "darknet", "efficientnet"}


@pytest.mark.slow
@pytest.mark.parametrize("arch,n", ALL_VARIANTS, ids=[_id(v) for v in ALL_VARIANTS])
def test_forward_rgb_and_gray_and_one_train_step(arch, n):
    rng = np.random.default_rng(0)
    # RGB 64x64, default head: forward gives a probability row per image.
    model = create_model(make_spec(arch, n, channels=3, size=64), 5)
    probs = model(rng.random((1, 64, 64, 3), dtype=np.float32), training=False).numpy()
    assert probs.shape == (1, 5)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)

    # Grayscale at the family's smallest tested size, the family's own head, one SGD step.
    size = get_entry(arch).min_input
    model = create_model(make_spec(arch, n, channels=1, size=size, retain_head=True), 3)
    assert model.input_shape == (None, size, size, 1)
    model.compile(tf.keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy",
                  run_eagerly=(arch, n) not in GRAPH_MODE)
    x = rng.random((2, size, size, 1), dtype=np.float32)
    y = np.array([0, 2])
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed > len(before) // 2, "a training step should move most trainable weights"
    assert model(x, training=False).shape == (2, 3)


@pytest.mark.parametrize("option", [
    {"use_pooling": False}, {"all_projections": True}, {"use_batch_norm": False, "use_bias": True}])
def test_resnet_options_change_the_graph(option):
    base = create_model(make_spec("resnet", 10, size=32), 4)
    other = create_model(make_spec("resnet", 10, size=32, **option), 4)
    names = {layer.name for layer in base.layers}
    other_names = {layer.name for layer in other.layers}
    if "use_pooling" in option:
        assert "pool1" in names and "pool1" not in other_names
        # the original's strided template: total stride 16 instead of 32
        assert other.get_layer("block_4a_act").output_shape[1] == 2
        assert base.get_layer("block_4a_act").output_shape[1] == 1
    elif "all_projections" in option:
        # resnet10's blocks are all first blocks, which project anyway (as the original): use resnet18's second ones
        plain18 = {layer.name for layer in create_model(make_spec("resnet", 18, size=32), 4).layers}
        proj18 = {layer.name for layer in create_model(make_spec("resnet", 18, size=32, **option), 4).layers}
        assert not any(f"block_{s}b_conv_shortcut" in plain18 for s in range(1, 5))
        assert {f"block_{s}b_conv_shortcut" for s in range(1, 5)} <= proj18
    else:
        assert not any(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in other.layers)
        assert other.get_layer("conv1").use_bias


def test_mobilenet_v2_all_projections_adds_prunable_shortcut_convs():
    plain = create_model(make_spec("mobilenet_v2", size=32), 4)
    proj = create_model(make_spec("mobilenet_v2", size=32, all_projections=True), 4)
    assert "block_2_projected_inputs" in {layer.name for layer in proj.layers}
    assert proj.count_params() > plain.count_params()


@pytest.mark.parametrize("act,layer_type", [("swish", tf.keras.layers.Activation), ("mish", tf.keras.layers.Activation),
                                            ("leaky_relu", tf.keras.layers.LeakyReLU), ("relu6", tf.keras.layers.ReLU)])
def test_activation_type_is_applied_even_for_efficientnet_b0(act, layer_type):
    spec = make_spec("efficientnet_b0", size=32)
    spec = spec.__class__(**{**spec.__dict__, "activation": spec.activation.__class__(act, {"alpha": 0.2})})
    layer = create_model(spec, 3).get_layer("stem_activation")
    assert isinstance(layer, layer_type)
    if act in ("swish", "mish"):
        assert layer.get_config()["activation"] == act
    if act == "leaky_relu":
        assert layer.alpha == pytest.approx(0.2)


def test_batch_norm_config_and_dropout_reach_the_layers():
    from dataclasses import replace

    from kestrel_trainer.spec.types import BatchNormSpec

    spec = make_spec("vgg", 16, size=32, retain_head=True, dropout=0.3, batch_norm=BatchNormSpec(0.99, 1e-3))
    model = create_model(spec, 3)
    bn = model.get_layer("block_1a_bn_1")
    assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)
    assert model.get_layer("fc1_dropout").rate == pytest.approx(0.3)
    squeeze = create_model(replace(spec, arch="squeezenet", n_layers=None), 3)
    assert squeeze.get_layer("drop9").rate == pytest.approx(0.3)


def test_default_head_is_pool_flatten_dense_named_predictions():
    model = create_model(make_spec("darknet", 19, size=32), 7)
    assert [type(layer).__name__ for layer in model.layers[-3:]] == ["GlobalAveragePooling2D", "Flatten", "Dense"]
    assert model.layers[-1].name == "predictions" and model.output_shape == (None, 7)
