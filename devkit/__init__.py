"""The development kit: what hack/ scripts, the benches and the tests share to run kubeclip locally.

Who uses it: ``hack/`` (``make cluster-up``, ``deploy``, ``monitoring-up``, ``kueue-up``, the demos and
benches) and ``tests/`` (the ``cluster`` fixture, the controller and trainer integration tests, the
e2e tests). It exists so that each of these is written once: the local cluster (``controlplane``,
``node``, ``netns``), the handle that runs kubectl and helm against it (``cluster``), the controller
as a subprocess (``operator``), where the tools and the cluster live (``paths``), polling
(``wait``), a free port (``ports``), FineTuneJob documents (``jobs``) and tiny model configs
(``tiny_model``). It is development tooling: neither image ships it, and it imports neither
``hack`` nor ``tests`` (import-linter checks both).
"""
