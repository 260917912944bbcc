"""The registry: the task types a manager can run, and their defaults.

Owns the :class:`TaskType` records, keyed by name; the manager's rooms read
the mapping (a type registered after ``start()`` is run from then on).
Registration happens on the host's threads, usually before ``start()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._codec import check_retries
from .context import TaskContext
from .errors import InvalidArgument

_TYPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True)
class TaskType:
    """A registered task type: the callable that runs it and its defaults."""

    name: str
    fn: Callable[[TaskContext], Any]
    callable: str
    max_retries: int = 0
    retry_delay: float = 1.0
    http: bool = False


def make_type(registry: dict[str, TaskType], name: str, fn: Callable[[TaskContext], Any], *, max_retries: int,
              retry_delay: float, http: bool) -> TaskType:
    """Check a registration and add it to ``registry``; the :class:`TaskType` made."""
    if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"task type must be 1-128 letters, digits or '_.:-' (not starting with a punctuation mark), got {name!r}"
        )
    if not callable(fn):
        raise InvalidArgument(f"the callable for task type {name!r} is not callable: {fn!r}")
    retries, delay = check_retries(max_retries, retry_delay)
    if name in registry and registry[name].fn is not fn:
        raise InvalidArgument(f"task type {name!r} is already registered to {registry[name].callable}")
    path = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    spec = TaskType(name, fn, path, retries, delay, bool(http))
    registry[name] = spec
    return spec
