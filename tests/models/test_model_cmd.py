"""`kestrel model info`: sizes a model from a spec file without a dataset."""

from __future__ import annotations

from kestrel_trainer.cli.main import main

from .arithmetic import expected_count


def test_model_info_prints_blocks_params_flops_and_shapes(tmp_path, capsys):
    spec = tmp_path / "spec.txt"
    spec.write_text('model_config {\n  arch: "resnet",\n  n_layers: 18\n  input_image_size: "3,224,224"\n'
                    '  retain_head: true\n  use_batch_norm: true\n  use_pooling: True\n  freeze_blocks: 1\n}\n')
    assert main(["model", "info", "-e", str(spec), "--classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "block 0:" in out and "block 4:" in out and "block_2a_conv_shortcut" in out
    # torchvision's resnet18 + the original's block_1a projection (1x1 conv 64x64, its BN's gamma and beta), minus
    # frozen block 1: four 3x3 convs 64x64, the 1x1 projection and five BNs' gamma and beta
    frozen = 4 * 3 * 3 * 64 * 64 + 64 * 64 + 5 * 2 * 64
    assert f"{11_689_512 + 64 * 64 + 2 * 64 - frozen:,} trainable" in out
    assert "input shape (H, W, C): (224, 224, 3)" in out and "output shape: (1000,)" in out
    # resnet18 at 224: 1.82 G multiply-adds (the published "1.8 GFLOPs" counts MACs)
    macs = int(out.split("compute per image: ")[1].split(" multiply-adds")[0].replace(",", ""))
    assert 1.80e9 < macs < 1.83e9


def test_model_info_totals_without_freezing(tmp_path, capsys):
    spec = tmp_path / "spec.txt"
    spec.write_text('model_config { arch: "mobilenet_v2" input_image_size: "1,32,32" retain_head: true '
                    'use_batch_norm: true }\n')
    assert main(["model", "info", "-e", str(spec), "--classes", "10", "--brief"]) == 0
    out = capsys.readouterr().out
    assert "input shape (H, W, C): (32, 32, 1)" in out and "output shape: (10,)" in out
    assert "trainable" in out and "block_" not in out


def test_model_info_bad_spec_is_one_line_error(tmp_path, capsys):
    spec = tmp_path / "spec.txt"
    spec.write_text('model_config { arch: "resnet" n_layers: 19 input_image_size: "3,64,64" }\n')
    assert main(["model", "info", "-e", str(spec)]) == 2
    assert "n_layers" in capsys.readouterr().err


def test_model_info_counts_equal_per_layer_arithmetic_with_frozen_blocks(tmp_path, capsys):
    """darknet19 on 1x32x32 with 7 classes, blocks 0 and 1 frozen: total, trainable and non-trainable as printed
    equal the layer-by-layer arithmetic (frozen convs and BN gamma/beta move to non-trainable)."""
    spec = tmp_path / "spec.txt"
    spec.write_text('model_config { arch: "darknet" n_layers: 19 input_image_size: "1,32,32" use_batch_norm: true '
                    'freeze_blocks: 0 freeze_blocks: 1 }\n')
    assert main(["model", "info", "-e", str(spec), "--classes", "7", "--brief"]) == 0
    out = capsys.readouterr().out
    n = expected_count("darknet", 19, channels=1, size=32, classes=7, retain_head=False, use_bias=False,
                       use_batch_norm=True)
    frozen = (3 * 3 * 1 * 32 + 2 * 32) + (3 * 3 * 32 * 64 + 2 * 64)  # conv1 and b1_conv1, their BN's gamma/beta
    assert (f"parameters: {n.total:,} total, {n.trainable - frozen:,} trainable, {n.non_trainable + frozen:,} "
            "non-trainable") in out
