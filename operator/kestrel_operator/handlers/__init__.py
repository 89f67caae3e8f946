"""Thin kopf handlers; importing this package registers them: `kopf run -m kestrel_operator.handlers`."""

from kestrel_operator.handlers import kopf_handlers  # noqa: F401  (registers the handlers)
