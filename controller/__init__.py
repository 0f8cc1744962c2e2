"""The FineTuneJob controller (``kubeclip operator`` / ``python -m controller``).

Layering (checked by import-linter): the pure modules (:mod:`.api`, :mod:`.crd`, :mod:`.naming`,
:mod:`.builders`, :mod:`.status`, :mod:`.reconcile`, :mod:`.settings`) import neither kopf nor
kubernetes; :mod:`.kube` is the only module that talks to the API server and :mod:`.operator`
the only one that imports kopf. See ``docs/controller.md``.
"""
