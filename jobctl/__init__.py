"""jobctl: submit, list, watch and cancel background jobs. The task API: `task` and `progress`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SoftTimeout", "__version__", "progress", "task"]

if TYPE_CHECKING:
    from .runtime import progress
    from .tasks import task
    from .timeouts import SoftTimeout


def __getattr__(name: str) -> Any:
    # Imported on first use so `jobctl --help` does not pay for settings and validation.
    if name == "task":
        from .tasks import task

        return task
    if name == "progress":
        from .runtime import progress

        return progress
    if name == "SoftTimeout":
        from .timeouts import SoftTimeout

        return SoftTimeout
    raise AttributeError(f"module 'jobctl' has no attribute {name!r}")
