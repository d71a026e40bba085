"""Outputs that are never lost: metadata, atomic saving and history."""
