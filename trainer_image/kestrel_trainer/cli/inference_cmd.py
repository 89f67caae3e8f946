"""`kestrel inference` (and `classification_tf1 inference`): classify one image or a folder."""

from __future__ import annotations

import argparse

from kestrel_trainer import storage
from kestrel_trainer.cli.common import (
    SPEC_HELP,
    add_common_task_arguments,
    add_key_argument,
    apply_device_flags,
    require_key_for,
    resolve_key,
    setup_logging,
    stage_model,
    task_status,
)
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec import load_spec

ORDER = 50


def run(args: argparse.Namespace) -> int:
    if not (args.image or args.image_dir):
        raise KestrelError("inference needs -i IMAGE and/or -d DIR", exit_code=2)
    spec = load_spec(args.experiment_spec, "inference")
    setup_logging(args.log_file, args.verbose)
    key = resolve_key(args)
    require_key_for(args.model_path, key)
    from kestrel_trainer.inference import run_inference

    # s3:// (docs/storage.md): -r is a local folder uploaded as it is written, so status.json goes to the bucket
    args.results_dir = storage.output_dir(args.results_dir)
    # As the original: status.json in the -r folder (only when -r is given).
    with task_status(args.results_dir, "inference", "Starting inference.") as status:
        # s3://: local copies of the model, -c and the images; without -r, result.csv goes to an s3:// -d's
        # prefix (uploaded), as it goes into a local -d folder
        image_dir_url = args.image_dir if storage.is_url(args.image_dir) else None
        args.model_path, args.classmap = stage_model(args.model_path), storage.input_path(args.classmap)
        args.image, args.image_dir = storage.input_path(args.image), storage.input_path(args.image_dir)
        results_dir = args.results_dir or storage.output_dir(image_dir_url)
        apply_device_flags(args)
        result = run_inference(spec, args.model_path, key, args.classmap, image=args.image, folder=args.image_dir,
                               batch_size=args.batch_size, results_dir=results_dir, top_k=args.top_k,
                               skip_bad_images=args.skip_bad_images)
        if result.image:
            path, predictions = result.image
            name = predictions[0][0]
            print(f"Class label = {_class_index(args, name)}")  # the original's two lines, for scripts that parse them
            print(f"Class name = {name}")
            for name, confidence in predictions:
                print(f"{path}: {name} ({confidence:.4f})")
        if result.csv_path:
            print(storage.describe(f"classified {len(result.folder_files)} images -> {result.csv_path}"))
        if status:
            status.write("SUCCESS", "Inference finished successfully.")
    return 0


def _class_index(args: argparse.Namespace, name: str) -> int:
    from kestrel_trainer.data import folders
    from kestrel_trainer.predict import default_classmap_path

    classmap = folders.read_classmap(args.classmap or default_classmap_path(args.model_path))
    return int(classmap[name])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inference", help="classify an image (-i) or a folder of images (-d)")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", required=True,
                   metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-m", "--model_path", "--model", dest="model_path", required=True,
                   help="model file: .tlt/.hdf5 from train or prune, or an exported .onnx/.etlt")
    add_key_argument(p, writes_models=False)
    p.add_argument("-cm", "--classmap_json", "--classmap", "-c", dest="classmap", default=None,
                   help="classmap.json (default: the one of the training run the model comes from)")
    p.add_argument("-i", "--image", default=None, help="one image (may be given with -d, as in the original)")
    p.add_argument("-d", "--image_dir", default=None, help="a folder, walked recursively (jpg, jpeg, png)")
    p.add_argument("-b", "--batch_size", type=int, default=1,
                   help="images per batch for -d (default 1, the original's)")
    p.add_argument("-r", "--results_dir", default=None, help="where result.csv goes (default: the image folder)")
    p.add_argument("--top_k", type=int, default=1, help="classes per image in the output (default 1)")
    p.add_argument("--skip-bad-images", "--skip_bad_images", dest="skip_bad_images", action="store_true",
                   help="leave out images that cannot be decoded, counting them (default: refuse, listing them)")
    add_common_task_arguments(p)
    p.set_defaults(func=run)
