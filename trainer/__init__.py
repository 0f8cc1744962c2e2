"""The trainer: fine-tunes an OpenCLIP model on a CSV of image-caption pairs, one process per rank.

Who uses it: the trainer image (``python -m trainer.node`` in every FineTuneJob pod, which runs
``python -m trainer`` under torchrun), ``kubeclip run`` (``trainer.launch``) and the tests. A
regular package like ``kubeclip`` and ``controller``, so that one checkout's ``trainer`` is never
merged with another installed copy's. It imports nothing on purpose: ``python -m trainer`` times
its start-up from its own first line, and the preflight runs before torch is imported. The modules
and their layering: docs/architecture.md and the import-linter contracts in pyproject.toml.
"""
