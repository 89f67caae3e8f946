"""`kubectl kestrel`: submit runs from a spec file and follow them; list, status, logs, delete, wait.

Exit codes: 0 the run succeeded; 1 it failed (the status message, the trainer's one line, is printed); 2 a bad
request (flags, the spec file, a refusal by the API server or its admission webhook: one line naming the field);
3 the outcome is unknown (a wait timed out, the API server did not answer); 130 following stopped by Ctrl-C
(the run goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any, Optional

import kestrel_operator
from kestrel_operator.client import build
from kestrel_operator.client.api import (
    EXIT_BAD_REQUEST,
    EXIT_SUCCEEDED,
    EXIT_UNKNOWN,
    KestrelClient,
    NotFound,
    Outcome,
)
from kestrel_operator.client.follow import RunView, evaluation_line, progress_line
from kestrel_operator.kube import KubeError
from kestrel_operator.resources import InvalidSpec
from kestrel_operator.resources.defaults import DATA_TYPES
from kestrel_operator.resources.types import TASKS

PROG = "kubectl-kestrel"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells expect after Ctrl-C
LOG_DRAIN_SECONDS = 15.0  # after the run ended, how long the launcher's last lines may take to arrive
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def duration(text: str) -> float:
    """`600`, `600s`, `10m`, `1h30m` -> seconds (kubectl's --timeout style)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 90s, 10m, 1h30m)")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _env_pair(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"--env {text!r}: expected NAME=VALUE")
    return name, value


def _overrides(text: str) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"--overrides: not JSON or YAML: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--overrides: expected an object, e.g. '{\"spec\": {\"shmSize\": \"1Gi\"}}'")
    return value


# -- commands ----------------------------------------------------------------------------------------------------

SUBMIT_FIELDS = ("image", "gpus", "num_processes", "key_secret", "data_pvc", "results_pvc", "data_mount",
                 "results_mount", "s3_endpoint", "s3_region", "s3_secret", "results_path", "model_path",
                 "from_train", "from_prune", "output_path", "pruning_threshold", "data_type", "cal_image_dir")


def cmd_submit(client: KestrelClient, args: argparse.Namespace) -> int:
    fields = {f: getattr(args, f) for f in SUBMIT_FIELDS if getattr(args, f, None) is not None}
    sub = client.submission(args.task, args.experiment_spec, args.name, env=tuple(args.env or ()),
                            overrides=args.overrides or {}, **fields)
    obj = client.submit(sub)
    ref = f"{TASKS[obj['kind']]}/{obj['metadata']['name']}"
    print(f"{obj['kind'].lower()}.kestrel.dev/{obj['metadata']['name']} created in namespace {client.namespace}",
          flush=True)
    if args.no_follow:
        print(f"follow it with: {resume_command(client, ref)}")
        return EXIT_SUCCEEDED
    return follow(client, ref, logs=True, timeout=args.timeout)


def resume_command(client: KestrelClient, ref: str) -> str:
    return f"kubectl kestrel wait {ref} -n {client.namespace} --follow"


def follow(client: KestrelClient, ref: str, logs: bool, timeout: Optional[float], show: bool = True) -> int:
    """Follow `ref` to its end: status lines, progress, (with `logs`) the launcher's log; the exit code."""
    view = RunView(sys.stdout, ref.split("/")[-1]) if show else None
    stop = threading.Event()
    streamer = None
    if logs and view is not None:
        streamer = threading.Thread(target=client.stream_logs, args=(ref, view.log, stop), name="logs", daemon=True)
        streamer.start()
    try:
        outcome = client.wait(ref, timeout=timeout, on_update=view.update if view is not None else None)
    except KeyboardInterrupt:
        if view is not None:
            view.close()
        print(f"\nstopped following; the run goes on. Follow it again with: {resume_command(client, ref)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.set()
    if streamer is not None:
        streamer.join(LOG_DRAIN_SECONDS)  # the launcher's last lines (its stream ends with the container)
    if view is not None:
        view.close()
    return report(outcome)


def report(outcome: Outcome) -> int:
    """The run's end, one line (and the evaluation or the output), on stdout for success, stderr otherwise."""
    status = outcome.status
    if outcome.exit_code == EXIT_SUCCEEDED:
        progress = status.get("progress") or {}
        detail = [progress_line(progress)] if progress else []
        if evaluation_line(progress):
            detail.append(evaluation_line(progress))
        if status.get("outputPath"):
            detail.append(f"output {status['outputPath']}")
        if outcome.reason and outcome.reason not in ("Promoted",) and outcome.message:
            detail.append(f"{outcome.reason}: {outcome.message}")
        print(f"{outcome.name}: Succeeded" + (f": {'; '.join(detail)}" if detail else ""))
    else:
        print(f"{outcome.name}: {outcome.phase} ({outcome.reason}): {outcome.message}", file=sys.stderr)
    return outcome.exit_code


def cmd_wait(client: KestrelClient, args: argparse.Namespace) -> int:
    return follow(client, args.name, logs=args.follow, timeout=args.timeout, show=args.follow)


def cmd_logs(client: KestrelClient, args: argparse.Namespace) -> int:
    try:
        for line in client.logs(args.name, follow=args.follow, tail=args.tail):
            print(line, flush=args.follow)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def cmd_status(client: KestrelClient, args: argparse.Namespace) -> int:
    obj = client.get(args.name)
    status = obj.get("status") or {}
    if args.output == "json":
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump(status, sort_keys=True), end="")
        return 0
    meta = obj["metadata"]
    rows = [("Name", f"{TASKS[obj['kind']]}/{meta['name']}"), ("Namespace", meta.get("namespace")),
            ("Phase", status.get("phase") or "(not reconciled yet)"), ("Reason", status.get("reason")),
            ("Message", status.get("message"))]
    progress = status.get("progress") or {}
    if progress:
        rows.append(("Progress", progress_line(progress)))
        rows.append(("Evaluation", evaluation_line(progress)))
        rows.append(("Tracker run", progress.get("trackerRun")))
    rows += [("Attempt", status.get("attempt")), ("MPIJob", status.get("mpiJobName")),
             ("Run path", status.get("runPath")), ("Output", status.get("outputPath"))]
    for key, value in rows:
        if value not in (None, ""):
            print(f"{key + ':':<12} {value}")
    return 0


def cmd_list(client: KestrelClient, args: argparse.Namespace) -> int:
    objs = client.list(args.kind, all_namespaces=args.all_namespaces)
    header = (["NAMESPACE"] if args.all_namespaces else []) + ["NAME", "PHASE", "PROGRESS", "ETA", "REASON"]
    rows = [header]
    for obj in sorted(objs, key=lambda o: (o["metadata"].get("namespace", ""), o["kind"], o["metadata"]["name"])):
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        epoch = progress.get("epoch")
        where = f"{epoch}/{progress.get('maxEpoch')}" if epoch is not None else ""
        if progress.get("percent") is not None:
            where = f"{where} {progress['percent']}%".strip()
        rows.append(([obj["metadata"].get("namespace", "")] if args.all_namespaces else [])
                    + [f"{TASKS[obj['kind']]}/{obj['metadata']['name']}", status.get("phase") or "", where,
                       progress.get("eta") or "", status.get("reason") or ""])
    if len(rows) == 1:
        print(f"no runs in {'any namespace' if args.all_namespaces else 'namespace ' + client.namespace}",
              file=sys.stderr)
        return 0
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        print("   ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def cmd_delete(client: KestrelClient, args: argparse.Namespace) -> int:
    obj = client.delete(args.name)
    print(f"{obj['kind'].lower()}.kestrel.dev/{obj['metadata']['name']} deleted (its MPIJob and pods go with it; "
          "the results stay on their volume or bucket)")
    return 0


# -- parser ------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the command, a flag is kept (a subcommand's default would overwrite it)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                        help="namespace (default: the kubeconfig context's, else default)")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser = argparse.ArgumentParser(prog="kubectl kestrel", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kubectl-kestrel {kestrel_operator.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    submit = sub.add_parser("submit", parents=[common], help="create a run from a spec file and follow it",
                            description="Create a ClassificationTrain/Prune/Export from a spec file and flags, then "
                            "follow it: progress (epoch, %%, ETA, metrics) and rank 0's log; Ctrl-C stops following, "
                            "not the run.")
    submit.add_argument("task", choices=("train", "prune", "export"), help="what to run")
    submit.add_argument("-e", "--experiment-spec", metavar="SPEC_FILE",
                        help="the experiment spec file (TAO text format), sent inline; required for train")
    submit.add_argument("--name", help="the resource's name (default: from the spec file's name)")
    submit.add_argument("--image", help="trainer image (default: the operator's, by GPUs)")
    submit.add_argument("--gpus", type=int, help="GPUs of the run (0: CPU only; default: 1 for train, 0 otherwise)")
    submit.add_argument("--num-processes", type=int, help="ranks (default: one per GPU)")
    submit.add_argument("--key-secret", metavar="SECRET",
                        help=f"Secret with the model key under 'key' (default {build.DEFAULT_KEY_SECRET})")
    vols = submit.add_argument_group("volumes (PVCs)")
    vols.add_argument("--data-pvc", metavar="CLAIM[/SUBPATH]", help="the dataset claim, mounted read-only")
    vols.add_argument("--data-mount", metavar="PATH", help="where the spec's dataset paths are (default /data)")
    vols.add_argument("--results-pvc", metavar="CLAIM[/SUBPATH]", help="the results claim")
    vols.add_argument("--results-mount", metavar="PATH", help="where results are mounted (default /results)")
    s3 = submit.add_argument_group("object storage (instead of the PVCs)")
    s3.add_argument("--s3-endpoint", metavar="URL", help="an S3-compatible endpoint (leave out for AWS)")
    s3.add_argument("--s3-region", help="the store's region")
    s3.add_argument("--s3-secret", metavar="SECRET", help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    s3.add_argument("--results-path", metavar="s3://BUCKET/PREFIX", help="where the results go")
    model = submit.add_argument_group("model (prune/export: the input; train: the pretrained model)")
    model.add_argument("--from-train", metavar="NAME", help="the model a ClassificationTrain promoted")
    model.add_argument("--from-prune", metavar="NAME", help="the model a ClassificationPrune wrote")
    model.add_argument("--model", dest="model_path", metavar="PATH", help="a model file as the pods see it")
    kind_flags = submit.add_argument_group("prune and export")
    kind_flags.add_argument("--output-path", metavar="PATH", help="the output file (default under the results)")
    kind_flags.add_argument("--pruning-threshold", type=float, help="prune: the pruning threshold (0-1)")
    kind_flags.add_argument("--data-type", choices=DATA_TYPES, help="export: fp32, fp16 or int8")
    kind_flags.add_argument("--cal-image-dir", metavar="PATH", help="export int8: calibration images")
    submit.add_argument("--env", action="append", type=_env_pair, metavar="NAME=VALUE",
                        help="an environment variable for the trainer (repeatable), e.g. MLFLOW_TRACKING_URI=...")
    submit.add_argument("--overrides", type=_overrides, metavar="JSON",
                        help="a JSON (or YAML) merge patch over the generated resource, as kubectl run --overrides, "
                        "e.g. '{\"spec\": {\"nodeSelector\": {\"pool\": \"gpu\"}}}'")
    submit.add_argument("--no-follow", action="store_true", help="create and return at once (exit 0)")
    submit.add_argument("--timeout", type=duration, default=None, help="stop following after this long (exit 3)")
    submit.set_defaults(func=cmd_submit)

    ls = sub.add_parser("list", parents=[common], help="list runs with phase, progress and ETA")
    ls.add_argument("kind", nargs="?", choices=("train", "prune", "export"), help="only this kind")
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    ls.set_defaults(func=cmd_list)

    status = sub.add_parser("status", parents=[common], help="a run's phase, message, progress, output")
    status.add_argument("name", help="NAME or KIND/NAME (train/NAME, prune/NAME, export/NAME)")
    status.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text", help="format")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", parents=[common], help="the launcher's log (rank 0's lines) of the current attempt")
    logs.add_argument("name", help="NAME or KIND/NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the launcher ends")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    logs.set_defaults(func=cmd_logs)

    delete = sub.add_parser("delete", parents=[common], help="delete a run (its MPIJob and pods; results stay)")
    delete.add_argument("name", help="NAME or KIND/NAME")
    delete.set_defaults(func=cmd_delete)

    wait = sub.add_parser("wait", parents=[common], help="wait for a run's end; exit 0/1 as submit does")
    wait.add_argument("name", help="NAME or KIND/NAME")
    wait.add_argument("--timeout", type=duration, default=None, help="give up after this long (exit 3), e.g. 30m")
    wait.add_argument("--follow", action="store_true", help="show progress and the launcher's log meanwhile")
    wait.set_defaults(func=cmd_wait)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "kubeconfig", None):
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        client = KestrelClient(namespace=getattr(args, "namespace", None))
        return int(args.func(client, args))
    except InvalidSpec as err:
        print(f"{PROG}: error: {err.message}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except NotFound as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except TimeoutError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_UNKNOWN
    except KubeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST if 400 <= err.status < 500 else EXIT_UNKNOWN
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # the kubeconfig: missing, unreadable, no current context
        if type(err).__name__ == "ConfigException":
            print(f"{PROG}: error: kubeconfig: {err}", file=sys.stderr)
            return EXIT_BAD_REQUEST
        raise

if __name__ == "__main__":
    sys.exit(main())
