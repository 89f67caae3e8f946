"""`kestrel dataset import|check|stats`: get a dataset onto disk and make sure it is fit to train on."""

from __future__ import annotations

import argparse

ORDER = 30


def register(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="import, check and describe image-folder datasets")
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    sub.required = True

    imp = sub.add_parser("import", help="write a public dataset as train/val/test image folders")
    imp.add_argument("name", choices=["fashion-mnist"], help="dataset to import")
    imp.add_argument("--out", required=True, help="output folder (train/, val/, test/ are created in it)")
    imp.add_argument("--per-class", type=int, default=None, metavar="N",
                     help="at most N images per class in each split (small subsets for tests and demos)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the class-balanced 10%% val split")
    imp.add_argument("--source", default=None, help=argparse.SUPPRESS)  # another IDX folder (tests)
    imp.set_defaults(func=run_import)

    chk = sub.add_parser("check", help="decode every image and list the ones that fail")
    chk.add_argument("root", help="dataset folder: ROOT/<class>/<images>")
    chk.add_argument("--workers", type=int, default=0, help="decode parallelism (0: automatic)")
    chk.set_defaults(func=run_check)

    st = sub.add_parser("stats", help="images per class, sizes, modes, class-imbalance warning")
    st.add_argument("root", help="dataset folder: ROOT/<class>/<images>")
    st.set_defaults(func=run_stats)


def run_import(args: argparse.Namespace) -> int:
    from kestrel_trainer import storage
    from kestrel_trainer.cli.common import setup_logging

    setup_logging()  # the progress lines (a bar on a terminal)
    from kestrel_trainer.data.datasets import fashion_mnist
    from kestrel_trainer.errors import DataError

    out = storage.output_dir(args.out)  # s3://: written locally, uploaded as it is written (docs/storage.md)
    for split in fashion_mnist.SPLITS:
        if storage.remote_exists(f"{out}/{split}"):
            raise DataError(f"{args.out.rstrip('/')}/{split} already exists: choose another --out or remove it first")
    result = fashion_mnist.import_fashion_mnist(
        out, per_class=args.per_class, seed=args.seed, source=args.source or fashion_mnist.DEFAULT_SOURCE)
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    print(f"wrote {sum(result.counts.values())} images to {args.out if storage.is_url(args.out) else result.out} "
          f"({counts}) in {result.seconds:.1f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from kestrel_trainer import storage
    from kestrel_trainer.cli.common import setup_logging

    setup_logging()  # the progress lines (a bar on a terminal)
    from kestrel_trainer.data.check import find_bad_images
    from kestrel_trainer.data.folders import scan

    folder = scan(storage.input_path(args.root))
    bad = find_bad_images(folder.files, args.workers)
    for b in bad:
        print(storage.describe(f"{b.path}: {b.reason}"))  # s3://: the objects' URLs, not their local copies
    print(storage.describe(f"{folder.root}: {len(folder.files)} images in {folder.n_classes} classes, {len(bad)} "
                           "cannot be decoded"))
    return 1 if bad else 0


def run_stats(args: argparse.Namespace) -> int:
    from kestrel_trainer import storage
    from kestrel_trainer.data.stats import dataset_stats, format_stats

    print(format_stats(dataset_stats(storage.input_path(args.root))))
    return 0
