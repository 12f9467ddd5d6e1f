"""Sinks: each reads the same CallRecord. They are independent of each other."""

from proxy.sinks.base import Sink

__all__ = ["Sink"]
