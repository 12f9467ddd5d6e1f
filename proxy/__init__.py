"""Tokenbooth: a metering reverse proxy for LLM provider APIs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
