"""`kestrel model info`: sizes a model from a spec file without a dataset."""

from __future__ import annotations

from kestrel_trainer.cli.main import main


def test_model_info_prints_blocks_params_flops_and_shapes(tmp_path, capsys):
    spec = tmp_path / "spec.txt"
    spec.write_text('model_config {\n  arch: "resnet",\n  n_layers: 18\n  input_image_size: "3,224,224"\n'
                    '  retain_head: true\n  use_batch_norm: true\n  use_pooling: True\n  freeze_blocks: 1\n}\n')
    assert main(["model", "info", "-e", str(spec), "--classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "block 0:" in out and "block 4:" in out and "block_2a_conv_shortcut" in out
    assert "11,689,512 trainable" not in out  # block 1 is frozen: fewer trainable parameters
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
