"""The side-by-side harness of ``make bench`` / ``make bench-gpu`` (development tooling, not shipped).

Who uses it: ``hack/bench_trainer.py`` (CPU, tiny model) and ``hack/bench_gpu.py`` (one GPU,
ViT-B-32). It holds what both need to compare kubeclip's trainer with open_clip_train 3.3.0 on
the same data: the dataset generator (:mod:`dataset`), the peer's pinned virtualenv
(:mod:`peer_env`), the peer's launcher with its CPU-DDP fix (``oc_train.py``), the parser of
its per-step log (:mod:`oc_log`), and the measuring wrapper (:mod:`measure`).
"""
