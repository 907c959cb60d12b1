"""jobctl: submit, list, watch and cancel background jobs. The task API: `task` and `progress`."""

from __future__ import annotations

from .runtime import progress
from .tasks import task

__version__ = "0.1.0"
__all__ = ["__version__", "progress", "task"]
