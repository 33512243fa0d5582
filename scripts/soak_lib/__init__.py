"""The chaos soak of quantd: light workers, a chaos driver and a checker.

``scripts/soak`` is the command; see docs/RELIABILITY.md.
"""
