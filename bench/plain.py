"""Functions for plain-RQ reference runs (no jobctl imports, so RQ's work-horse stays light)."""


def noop() -> None:
    """Do nothing."""
