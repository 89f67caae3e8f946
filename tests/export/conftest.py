"""Fixtures for export tests: real Fashion-MNIST images, a real colour photo, small models with non-trivial
weights (random BN statistics and head, seeded) saved as the trainer saves them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import import_fashion_subset

SPEC = """\
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "{c},{size},{size}"
  use_batch_norm: true
  use_pooling: true
}}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 }} }}
  batch_size_per_gpu: 8
  n_epochs: 1
  preprocess_mode: "{mode}"
  {image_mean}
}}
eval_config {{ eval_dataset_path: "{data}/test" top_k: 3 batch_size: 16 }}
"""


def write_spec(folder: Path, data: Path, *, c: int = 1, size: int = 32, mode: str = "torch",
               image_mean: str = "") -> Path:
    path = folder / f"spec_{mode}_{c}.txt"
    path.write_text(SPEC.format(c=c, size=size, data=data, mode=mode, image_mean=image_mean))
    return path


@pytest.fixture(scope="session")
def fashion(tmp_path_factory) -> Path:
    """4 real images per class per split (120 files), imported from the Debian package."""
    return import_fashion_subset(tmp_path_factory.mktemp("fashion") / "fm", per_class=4)


@pytest.fixture(scope="session")
def photo() -> Path:
    """A real colour photograph (matplotlib's sample data: Grace Hopper, 600x512 JPEG)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert path.is_file(), path
    return path


def randomise(model, seed: int = 0, inputs=None):
    """Non-trivial seeded weights, so that scores differ between classes and images: random BN affine terms,
    then BN statistics from one forward pass of random inputs (fresh glorot weights with unit statistics
    fade to a constant, or blow up, in deep nets), then a random head scaled to logits with std ~2.
    `inputs`: the images the model will be run on (their statistics), random normal ones by default."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in bns:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
        layer.momentum = 0.0
    x = rng.standard_normal((16, *model.input_shape[1:])).astype(np.float32) if inputs is None else inputs
    model(x, training=True)  # with momentum 0, the moving statistics become this batch's
    head = model.get_layer("predictions")
    features = tf.keras.Model(model.input, head.input)(x, training=False).numpy()
    kernel, bias = head.get_weights()
    spread = np.sqrt(np.mean(features.var(axis=0)) * kernel.shape[0]) + 1e-6  # logits with std ~2 across images
    head.set_weights([rng.normal(0, 2.0 / spread, kernel.shape), rng.normal(0, 0.1, bias.shape)])
    return model


def arch_model(arch: str, n_layers, channels: int = 1, size: int = 32, n_classes: int = 10, inputs=None):
    from kestrel_trainer.models.registry import create_model
    from tests.models.specs import make_spec

    return randomise(create_model(make_spec(arch, n_layers, channels=channels, size=size), n_classes), inputs=inputs)


def tiny_model(channels: int = 1, size: int = 32, n_classes: int = 10, seed=None):
    """Conv-BN-ReLU, pooled, softmax `predictions`: converts in ~1 s, for flag and error tests. `seed`: the conv's
    initial weights (the rest are seeded by randomise)."""
    import tensorflow as tf

    x = inp = tf.keras.Input((size, size, channels), name="input_1")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, use_bias=False,
                               kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed))(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return randomise(tf.keras.Model(inp, out))


def save_run(model, run: Path, fashion: Path, key=None) -> Path:
    """RUN/weights/<name>.hdf5 (or .tlt with a key) and RUN/classmap.json, as training leaves them."""
    from kestrel_trainer.model_io.files import save_model

    (run / "weights").mkdir(parents=True, exist_ok=True)
    (run / "classmap.json").write_text((fashion / "classmap.json").read_text())
    return save_model(model, run / "weights" / "model_001.tlt", key)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fashion) -> Path:
    """A saved tiny model (plain .hdf5) with its classmap."""
    return save_run(tiny_model(), tmp_path_factory.mktemp("tiny") / "run", fashion)


def classmap_names(fashion: Path) -> list[str]:
    cm = json.loads((fashion / "classmap.json").read_text())
    return sorted(cm, key=cm.get)


def real_test_batch(fashion: Path, spec_path: Path) -> np.ndarray:
    """The test split's real images (4 per class), preprocessed by the spec as evaluate does (NHWC)."""
    from kestrel_trainer.export import calibration
    from kestrel_trainer.spec import load_spec

    files = [str(f) for f in sorted((fashion / "test").rglob("*.png"))]
    return np.concatenate(calibration.preprocessed(files, load_spec(spec_path), 16))


@pytest.fixture(scope="session")
def spread_run(tmp_path_factory, fashion) -> tuple[Path, Path]:
    """(saved model, spec): a 10-class tiny model whose BN statistics and head come from the real test images,
    so its top-1 spreads over several classes on them (a fresh tiny model may pick one class for every image)."""
    folder = tmp_path_factory.mktemp("spread")
    spec = write_spec(folder, fashion)
    images = real_test_batch(fashion, spec)
    # The same model every run (a fresh draw made tests on it pass or fail by chance): the first seeded draw whose
    # top-1 on the real test images spreads over at least half of the classes.
    for seed in range(20):
        model = randomise(tiny_model(seed=seed), seed=seed, inputs=images)
        if len(set(model.predict(images, verbose=0).argmax(1))) >= 5:
            return save_run(model, folder / "run", fashion), spec
    raise AssertionError("no seeded tiny model spreads its top-1 over 5 classes of the real test images")
