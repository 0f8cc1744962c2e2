"""Test-suite support code: the real control plane (controlplane.py) and the handle tests use (cluster.py)."""
