"""offboard: take a person out of the workforce identity stack in the one safe order."""

__version__ = "0.1.0"
