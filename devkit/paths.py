"""Where things live for the development kit: the repository, the built tools, the local cluster's directory.

Who uses it: the other devkit modules, ``hack/`` scripts and tests. It exists so that
``$KUBECLIP_TOOLS`` (``make tools``: ``hack/tools.sh`` puts kube-apiserver, etcd, kubectl, helm and
promtool in its ``bin/``) and ``$KUBECLIP_CLUSTER_DIR`` (``make cluster-up``'s state, kubeconfig and
logs) are read in one place, with one default each.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The one-node cluster of ``make cluster-up``: state.json, kubeconfig, logs (hack/cluster.py).
CLUSTER_DIR = Path(os.environ.get("KUBECLIP_CLUSTER_DIR") or REPO / ".cluster")


def tools_dir() -> Path:
    """``$KUBECLIP_TOOLS``, default ``<repo>/.tools``: the binaries (``bin/``) and image keys (``images/``)."""
    return Path(os.environ.get("KUBECLIP_TOOLS") or REPO / ".tools")


def tools_bin() -> Path:
    """Where ``hack/tools.sh`` puts the binaries: ``$KUBECLIP_TOOLS/bin``."""
    return tools_dir() / "bin"


def tool(name: str) -> str:
    """The path of binary ``name`` in :func:`tools_bin` (whether or not it is there yet)."""
    return str(tools_bin() / name)
