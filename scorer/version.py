"""The package version, in one place (pyproject.toml and the image tag must equal it: a test checks)."""

__version__ = "0.1.0"
