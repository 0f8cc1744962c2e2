"""Test-suite support code only the Dockerfile tests need (dockerfile.py); what scripts share with tests is in devkit/."""
