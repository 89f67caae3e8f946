"""`kestrel-operator run` (the operator) and `kestrel-operator render -f RESOURCE.yaml` (no cluster).

`render` prints exactly what the operator would create, for GitOps review; an invalid resource
prints the InvalidSpec message and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

import kestrel_operator
from kestrel_operator.resources import InvalidSpec
from kestrel_operator.settings import Settings, SettingsError, from_env

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")  # what kubectl reads from a directory


def expand_filenames(values: Sequence[str], recursive: bool = False) -> list[str]:
    """-f as kubectl takes it: each value a file, a directory (its .yaml/.yml/.json files in name order;
    with -R its subdirectories too) or - for stdin; a value may list several, comma-separated."""
    paths: list[str] = []
    for value in values:
        for item in (part for part in value.split(",") if part):
            path = Path(item)
            if item == "-" or not path.is_dir():
                paths.append(item)  # a missing file is reported when it is read
                continue
            found = sorted(path.rglob("*") if recursive else path.iterdir())
            files = [str(f) for f in found if f.is_file() and f.suffix in MANIFEST_SUFFIXES]
            if not files:
                raise InvalidSpec(f"-f {item}: no {', '.join(MANIFEST_SUFFIXES)} files in this directory")
            paths.extend(files)
    if paths.count("-") > 1:
        raise InvalidSpec("-f -: standard input can be read only once")
    return paths


def _load_documents(paths: Sequence[str]) -> list[dict]:
    import yaml

    docs: list[dict] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise InvalidSpec(f"cannot read {path}: {err.strerror}") from None
        try:
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        except yaml.YAMLError as err:
            raise InvalidSpec(f"{path}: not valid YAML: {err}") from None
    return docs


def cmd_render(args: argparse.Namespace) -> int:
    from kestrel_operator.render import Renderer, dump_yaml

    settings = from_env()
    if args.gpus_per_node is not None:
        settings = replace(settings, gpus_per_node=args.gpus_per_node)
    if args.image:
        settings = replace(settings, default_image=args.image)
    docs = _load_documents(expand_filenames(args.filename, args.recursive))
    objects = Renderer(docs, settings, namespace=args.namespace).render_all()
    if not objects:
        raise InvalidSpec("no ClassificationTrain, ClassificationPrune or ClassificationExport in the input")
    sys.stdout.write(dump_yaml(objects))
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    from kestrel_operator.render import dump_yaml
    from kestrel_operator.resources.crd import all_crds

    sys.stdout.write(dump_yaml(all_crds()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    settings = from_env()
    level = settings.log_level
    kopf.configure(debug=level == "DEBUG", verbose=level == "INFO", quiet=level in ("WARNING", "ERROR", "CRITICAL"))
    logging.getLogger().setLevel(level)
    from kestrel_operator.handlers import kopf_handlers

    kopf_handlers._state["settings"] = settings
    namespaces = list(args.namespace or settings.watch_namespaces)
    kopf_handlers._state["namespaces"] = tuple(namespaces)
    elector = start_serving(settings, namespaces)
    try:
        kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
                 liveness_endpoint=args.liveness)
    finally:
        if elector is not None:
            elector.stop(release=True)
    return 0


def start_serving(settings: Settings, namespaces: list[str]):
    """Metrics, leader election and the admission webhook, each only when its setting is given (the chart
    sets them; see serving/). Returns the LeaderElector, if any, for a clean release on exit."""
    import threading

    from kestrel_operator.handlers import kopf_handlers
    from kestrel_operator.serving import leader, metrics

    serving = settings.serving
    api = kopf_handlers.reconciler().api
    if serving.metrics_port:
        metrics.serve(serving.metrics_port, serving.metrics_host)
    elector = None
    if serving.leader_lease:
        def started() -> None:
            # A new leader queues every resource once: followers keep the keys of the events they saw, but a
            # resource may have changed while no replica led. Not in the election thread: a long list must not
            # delay the next renewal.
            metrics.IS_LEADER.set(1)
            threading.Thread(target=kopf_handlers.controller().resync, args=(tuple(namespaces),), name="resync",
                             daemon=True).start()

        elector = leader.LeaderElector(api, serving.namespace, serving.leader_lease, serving.identity,
                                       serving.lease_seconds, on_started_leading=started,
                                       on_stopped_leading=lambda: metrics.IS_LEADER.set(0))
        leader.install(elector)
        elector.start()
    else:
        metrics.IS_LEADER.set(1)
    if serving.webhook_port:
        from kestrel_operator.handlers import admission
        from kestrel_operator.serving import webhook

        admission.serve_with(webhook.server(api, serving))
    return elector


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kestrel-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kestrel-operator {kestrel_operator.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the operator (in a pod, or with KUBECONFIG)")
    run.add_argument("-n", "--namespace", action="append",
                     help="watch this namespace (repeatable); default KESTREL_WATCH_NAMESPACES, else all")
    run.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.set_defaults(func=cmd_run)

    render = sub.add_parser("render", help="print the objects the operator would create, without a cluster")
    render.add_argument("-f", "--filename", action="append", required=True,
                        help="YAML (or JSON) file with resources (and referenced ConfigMaps/resources), a directory of "
                        "them (.yaml, .yml, .json) or - for stdin, as kubectl -f; repeatable, or comma-separated")
    render.add_argument("-R", "--recursive", action="store_true",
                        help="with a directory in -f, also read the files of its subdirectories")
    render.add_argument("--gpus-per-node", type=int, default=None,
                        help="default gpusPerNode (else KESTREL_GPUS_PER_NODE, else 8)")
    render.add_argument("--image", default=None, help="default trainer image (else KESTREL_DEFAULT_IMAGE)")
    render.add_argument("-n", "--namespace", default="default", help="namespace for resources that name none")
    render.set_defaults(func=cmd_render)

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions (the files in crds/)")
    crds.set_defaults(func=cmd_crds)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InvalidSpec as err:
        print(f"kestrel-operator: InvalidSpec: {err.message}", file=sys.stderr)
        return err.exit_code
    except SettingsError as err:
        print(f"kestrel-operator: settings: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
