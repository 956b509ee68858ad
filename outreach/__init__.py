"""Outreach engine: detect customer risk on event streams, fix what is allowed, tell them first."""

__version__ = "0.1.0"
