"""Adapters to external inference engines."""
