"""The task registry, argument validation, and the built-in tasks."""

from __future__ import annotations

import importlib
import inspect
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, overload

from pydantic import Field, TypeAdapter, ValidationError

from .errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Param:
    """One parameter of a task, as shown by `jobctl tasks`."""

    name: str
    annotation: Any
    default: Any
    required: bool
    kind: inspect._ParameterKind

    @property
    def type_name(self) -> str:
        ann = self.annotation
        if ann is inspect.Parameter.empty:
            return "any"
        if getattr(ann, "__metadata__", None) is not None:
            ann = ann.__origin__
        return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its name, function and parameters."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...] = field(default=())
    accepts_any: bool = False

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.func) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


_registry: dict[str, TaskSpec] = {}
_loaded_modules: set[str] = set()


def _spec_for(name: str, func: Callable[..., Any]) -> TaskSpec:
    try:
        hints = inspect.get_annotations(func, eval_str=True)
    except Exception:
        hints = {}
    params = []
    accepts_any = False
    for p in inspect.signature(func).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        params.append(
            Param(
                name=p.name,
                annotation=hints.get(p.name, p.annotation),
                default=p.default,
                required=p.default is inspect.Parameter.empty,
                kind=p.kind,
            )
        )
    return TaskSpec(name=name, func=func, params=tuple(params), accepts_any=accepts_any)


@overload
def task(func: F, /) -> F: ...
@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a function as a task, named `module.function` unless `name=` is given."""

    def register(fn: F) -> F:
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        _registry[task_name] = _spec_for(task_name, fn)
        return fn

    return register(func) if func is not None else register


def load_task_modules(modules: list[str]) -> None:
    """Import the modules named in JOBCTL_TASKS so their tasks register."""
    for module in modules:
        if module in _loaded_modules:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise UsageError(
                f"cannot import task module {module!r} from JOBCTL_TASKS ({type(exc).__name__}: {exc})"
            ) from None
        _loaded_modules.add(module)


def all_tasks() -> dict[str, TaskSpec]:
    """Every registered task, by name."""
    return dict(sorted(_registry.items()))


def get_task(name: str) -> TaskSpec | None:
    """The registered task called `name`, if any."""
    return _registry.get(name)


def require_task(name: str) -> TaskSpec:
    """The registered task called `name`, or a usage error listing the known ones."""
    spec = _registry.get(name)
    if spec is None:
        known = ", ".join(sorted(_registry)) or "none"
        raise UsageError(f"unknown task {name!r} (registered tasks: {known})")
    return spec


_adapters: dict[int, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    key = id(annotation)
    if key not in _adapters:
        _adapters[key] = TypeAdapter(annotation)
    return _adapters[key]


def validate_args(spec: TaskSpec, args: Mapping[str, Any]) -> None:
    """Check `args` against the task's signature: unknown, missing and mistyped arguments are usage errors."""
    known = {p.name: p for p in spec.params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    for key in args:
        if key not in known and not spec.accepts_any:
            expected = ", ".join(known) or "none"
            raise UsageError(f"task {spec.name!r} has no argument {key!r} (arguments: {expected})")
    for param in known.values():
        if param.name not in args:
            if param.required:
                raise UsageError(f"task {spec.name!r} needs argument {param.name!r}")
            continue
        if param.annotation is inspect.Parameter.empty:
            continue
        try:
            _adapter(param.annotation).validate_python(args[param.name], strict=True)
        except ValidationError as exc:
            detail = exc.errors()[0].get("msg", "invalid value") if exc.errors() else "invalid value"
            raise UsageError(
                f"argument {param.name!r} of task {spec.name!r}: {detail.lower()} "
                f"(got {args[param.name]!r}, expected {param.type_name})"
            ) from None
        except Exception as exc:  # an annotation pydantic cannot check: accept the value as given
            del exc


# ---------------------------------------------------------------- built-in tasks


def _progress(current: int, total: int | None = None, message: str | None = None) -> None:
    from .runtime import progress

    progress(current, total, message)


NonNegative = Annotated[float, Field(ge=0, le=86_400)]


@task(name="process")
def process(
    steps: Annotated[int, Field(ge=0, le=1_000_000)] = 10,
    min_delay: NonNegative = 1.0,
    max_delay: NonNegative = 3.0,
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.1,
    seed: int | None = None,
) -> dict[str, Any]:
    """Simulate a long-running job: sleep through steps, reporting progress, failing at random."""
    if min_delay > max_delay:
        raise ValueError(f"min_delay ({min_delay}) is greater than max_delay ({max_delay})")
    rng = random.Random(seed)
    fail_at = rng.randint(1, max(steps, 1)) if rng.random() < failure_rate else None
    started = time.monotonic()
    _progress(0, steps, "starting")
    for step in range(1, steps + 1):
        time.sleep(rng.uniform(min_delay, max_delay))
        if step == fail_at:
            raise RuntimeError("Random processing error")
        _progress(step, steps, f"step {step} of {steps}")
    if fail_at is not None and steps == 0:
        raise RuntimeError("Random processing error")
    return {"steps": steps, "seconds": round(time.monotonic() - started, 3)}


@task(name="health_check")
def health_check() -> dict[str, str]:
    """Return a healthy status with the worker's current time."""
    return {"status": "healthy", "timestamp": datetime.now(UTC).isoformat()}


# Built-in tasks kept in modules of their own register when those are imported.
from . import shell as _shell  # noqa: E402,F401
