"""The single source of safegrad's version (read by setup.py without importing TensorFlow)."""
__version__ = "0.1.0"
