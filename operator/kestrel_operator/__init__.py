"""Kestrel operator: reconciles ClassificationTrain/Prune/Export resources into Kubeflow MPIJobs.

Layers point downwards only: cli -> handlers -> manifests/status -> resources -> kestrel_trainer.spec.
Only `kube.py` talks to the API server; everything below `handlers/` is pure and has no kopf or
kubernetes-client import, so `kestrel-operator render` and the unit tests need no cluster, and the
package imports without TensorFlow.
"""

__version__ = "0.1.0"

GROUP = "kestrel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "kestrel-operator"
