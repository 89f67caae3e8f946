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


def test_a_spec_file_builds_the_originals_network_whatever_it_sets_where_a_family_takes_no_option():
    """Issue 30: activation_type and dropout reach only the families that take them (spec/families.py)."""
    from kestrel_trainer.spec import parse_spec_text

    resnet = parse_spec_text('model_config { arch: "resnet" n_layers: 10 input_image_size: "3,32,32" '
                             'retain_head: true dropout: 0.5 activation { activation_type: "swish" } }')
    model = create_model(resnet.model, 3)
    assert not [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dropout)]
    assert not [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Activation)
                and layer.get_config()["activation"] == "swish"]
    assert len(resnet.warnings) == 2
    squeeze = parse_spec_text('model_config { arch: "squeezenet" input_image_size: "3,32,32" retain_head: true '
                              'dropout: 0.5 }')
    assert create_model(squeeze.model, 3).get_layer("drop9").rate == pytest.approx(1e-3)  # the original's fixed rate
    tiny = parse_spec_text('model_config { arch: "cspdarknet_tiny" input_image_size: "3,32,32" '
                           'activation { activation_type: "mish" } }')
    assert create_model(tiny.model, 3).get_layer("conv1_act").get_config()["activation"] == "mish"


# -- issue 30 item 3: batch norm, bias, activation and dropout as the original's builder and templates build them
# (NVIDIA/tao_tensorflow1_backend, nvidia_tao_tf1/cv/makenet/model/model_builder.py get_model and
# nvidia_tao_tf1/core/templates/*; file:line in kestrel_trainer/spec/families.py). Built from spec text, as a
# user's spec file is, checked by what a user sees: layer kinds, biases, parameter counts.

def _of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def _convs(model):
    return _of(model, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D))


def _activation_kinds(model):
    """Every activation layer as the original's users would name it (relu, relu6, swish, ...)."""
    kinds = set()
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.ReLU):
            kinds.add("relu6" if layer.max_value is not None and float(layer.max_value) == 6.0 else "relu")
        elif isinstance(layer, tf.keras.layers.Activation) and layer.name != "predictions":
            kinds.add(layer.get_config()["activation"])
    return kinds


def _model(text, classes):
    from kestrel_trainer.spec import parse_spec_text

    spec = parse_spec_text(text, source="s.txt")
    return spec, create_model(spec.model, classes)


def _trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_efficientnet_has_batch_norm_whatever_use_batch_norm_says():
    # the original's own sample spec (experiment_specs/efficientnet_b0_openimages176.txt) omits use_batch_norm,
    # which proto3 reads as false; its template puts batch norm after every conv but the squeeze-excite ones.
    spec, model = _model('model_config {\n  arch: "efficientnet_b0"\n  use_bias: False\n  retain_head: True\n'
                         '  resize_interpolation_method: BICUBIC\n  input_image_size: "3,32,32"\n}\n', 1000)
    assert not spec.warnings
    # b0: 16 MBConv blocks, the first without expansion (dwconv, project), the others expand, dwconv, project;
    # plus the stem and top convs: 1 + 2 + 15 * 3 + 1 = 49 convs with batch norm, 2 squeeze-excite convs a block
    assert len(_of(model, tf.keras.layers.BatchNormalization)) == 49
    assert len(_convs(model)) == 49 + 2 * 16
    assert _trainable(model) == 5_288_548  # Keras applications' EfficientNetB0 (Tan & Le's b0: 5.3M)

    spec, model = _model('model_config {\n  arch: "efficientnet_b0"\n  input_image_size: "3,32,32"\n'
                         '  use_batch_norm: false\n  use_bias: true\n}\n', 10)
    assert [w for w in spec.warnings if w.startswith("s.txt:4: model_config.use_batch_norm: false is ignored")]
    assert len(_of(model, tf.keras.layers.BatchNormalization)) == 49
    # use_bias reaches the convs the original passes it to; project_conv never has one, SE convs always do
    assert model.get_layer("stem_conv").use_bias and model.get_layer("block2a_expand_conv").use_bias
    assert model.get_layer("block2a_dwconv").use_bias and model.get_layer("top_conv").use_bias
    assert not any(layer.use_bias for layer in model.layers if layer.name.endswith("project_conv"))
    se_convs = [layer for layer in model.layers if layer.name.endswith(("se_reduce", "se_expand"))]
    assert len(se_convs) == 2 * 16 and all(layer.use_bias for layer in se_convs)


def test_alexnet_is_the_originals_relu_network_with_biases_no_batch_norm_and_no_head_dropout():
    spec, model = _model('model_config {\n  arch: "alexnet"\n  input_image_size: "3,32,32"\n  retain_head: true\n'
                         '  dropout: 0.5\n  use_batch_norm: true\n  use_bias: false\n'
                         '  activation { activation_type: "swish" }\n}\n', 10)
    lines = sorted(w.split(": ")[0] for w in spec.warnings)
    assert lines == ["s.txt:5", "s.txt:6", "s.txt:7", "s.txt:8"]
    assert not _of(model, tf.keras.layers.BatchNormalization)
    assert not _of(model, tf.keras.layers.Dropout)
    assert all(layer.use_bias for layer in _convs(model) + _of(model, tf.keras.layers.Dense))
    assert _activation_kinds(model) == {"relu"}
    assert len(_of(model, tf.keras.layers.ReLU)) == 5 + 2  # conv1..conv5, fc6, fc7
    # pools after conv1 and conv2 only ('same'), none after conv5: fc6 reads 32 / 4 / 2 / 2 = 2x2x256
    assert [layer.name for layer in _of(model, tf.keras.layers.MaxPooling2D)] == ["pool1", "pool2"]
    assert tuple(model.get_layer("fc6").kernel.shape) == (2 * 2 * 256, 4096)

    _, model = _model('model_config { arch: "alexnet" input_image_size: "3,32,32" use_batch_norm: true }', 10)
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]  # Krizhevsky et al., one tower
    expected = sum(k * k * c_in * c_out + c_out for c_in, c_out, k in convs) + 256 * 10 + 10  # + the dense head
    assert _trainable(model) == model.count_params() == expected


def test_squeezenet_is_the_papers_network_whatever_the_spec_says():
    spec, model = _model('model_config {\n  arch: "squeezenet"\n  input_image_size: "3,32,32"\n  retain_head: true\n'
                         '  use_batch_norm: true\n  use_bias: false\n  activation { activation_type: "mish" }\n}\n',
                         1000)
    assert sorted(w.split(": ")[0] for w in spec.warnings) == ["s.txt:5", "s.txt:6", "s.txt:7"]
    assert not _of(model, tf.keras.layers.BatchNormalization)
    assert all(layer.use_bias for layer in _convs(model))
    assert _activation_kinds(model) == {"relu"}
    assert [layer.rate for layer in _of(model, tf.keras.layers.Dropout)] == [pytest.approx(1e-3)]
    assert _trainable(model) == 1_248_424  # SqueezeNet 1.0 (Iandola et al. 2016; torchvision squeezenet1_0)


@pytest.mark.parametrize("arch,relus", [("mobilenet_v1", 1 + 13 * 2), ("mobilenet_v2", 1 + 1 + 16 * 2 + 1)])
def test_mobilenets_are_relu_as_the_originals_builder_builds_them(arch, relus):
    # v1: stem + depthwise and pointwise of 13 blocks; v2: stem, expanded_conv's depthwise, expand and depthwise
    # of blocks 1-16, the top conv. The original's builder never passes activation_type: its templates' 'relu'.
    spec, model = _model(f'model_config {{\n  arch: "{arch}"\n  input_image_size: "3,32,32"\n'
                         f'  activation {{ activation_type: "relu6" }}\n  use_batch_norm: true\n}}\n', 5)
    assert [w for w in spec.warnings if w.startswith("s.txt:4: model_config.activation.activation_type: ignored")]
    assert _activation_kinds(model) == {"relu"}
    assert len(_of(model, tf.keras.layers.ReLU)) == relus
    assert len(_of(model, tf.keras.layers.BatchNormalization)) == len(_convs(model))  # use_batch_norm: the spec's
    _, plain = _model(f'model_config {{ arch: "{arch}" input_image_size: "3,32,32" retain_head: true }}', 5)
    assert _activation_kinds(plain) == {"relu"} and not _of(plain, tf.keras.layers.BatchNormalization)
    assert not _of(plain, tf.keras.layers.Dropout)
