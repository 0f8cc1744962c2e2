"""Development scripts, run as modules from the repository root: ``python -m hack.cluster up``.

Who uses it: the Makefile (``make cluster-up``, ``deploy``, ``monitoring-up``, ``kueue-up``, ``demo``,
``bench``, ``bench-gpu``), people following README and docs, and tests that check a script
(``hack.forgetting_demo``, ``hack.monitoring``, ``hack.bench_gpu``, ``hack.peer``). A package so that
scripts and tests import ``hack.<name>`` and ``devkit`` from the repository root with no
edits of the import path; what scripts and tests share lives in ``devkit/``. Not shipped in any image.
"""
