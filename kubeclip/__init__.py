"""kubeclip: fine-tune OpenCLIP models on Kubernetes (and on a laptop with ``kubeclip run``).

This package holds only the command-line shell (:mod:`kubeclip.cli`); the work lives in
``trainer`` (what every training pod runs) and ``controller`` (the operator).
"""

__version__ = "0.1.0"
