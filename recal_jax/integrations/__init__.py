"""Bridges to other training libraries (each an optional extra)."""
