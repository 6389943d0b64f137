"""Adapters to the outside world, one protocol per role."""
