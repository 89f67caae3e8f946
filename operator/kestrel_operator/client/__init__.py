"""The client for people who submit runs from a laptop with a kubeconfig: `kubectl kestrel ...` (cli.py) over a
small Python API (api.py: KestrelClient), like the Kubeflow SDK's TrainerClient. It creates a resource from a spec
file and a few flags (build.py), checks it with the admission webhook's own check before sending it, follows its
status.progress and its launcher's log (follow.py), and maps the outcome to an exit code."""

from kestrel_operator.client.api import KestrelClient, NotFound, Outcome
from kestrel_operator.client.build import Submission

__all__ = ["KestrelClient", "NotFound", "Outcome", "Submission"]
