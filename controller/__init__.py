"""The FineTuneJob controller (``kubeclip operator`` / ``python -m controller``).

Layering (checked by import-linter, ``make lint``): only :mod:`.kube` (the one module that talks to
the API server) and :mod:`.operator` (the kopf handlers) import the Kubernetes client or kopf; every
other module, the planner (:mod:`.reconcile`) and its steps included, is pure and tested with plain
data; no two modules import each other, even through function-level imports. See ``docs/controller.md``.
"""
