"""What the operator process serves besides reconciling: the admission webhook's TLS (webhook.py), Prometheus
metrics (metrics.py) and leader election (leader.py). Each part is off unless its setting is given."""
