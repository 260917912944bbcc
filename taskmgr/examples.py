"""Example task types, for ``taskmgr demo`` and ``taskmgr serve --examples``.

* ``count``: counts to ``input["to"]`` (default 10), one step every
  ``input["pause"]`` seconds (default 1), reporting progress; stops at once when
  cancelled. Returns the number reached.
* ``flaky``: fails on its first run and succeeds on the retry.
* ``fail``: fails with ``ValueError: bad input``.

All three may be submitted over HTTP.
"""

from __future__ import annotations

from typing import Any

from .context import TaskContext
from .errors import InvalidArgument
from .manager import TaskManager

__all__ = ["setup"]


def _number(value: Any, name: str, default: float, high: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise InvalidArgument(f"input[{name!r}] must be a number from 0 to {high}, got {value!r}")
    return value


def count(ctx: TaskContext) -> int:
    spec = ctx.input if isinstance(ctx.input, dict) else {}
    to = int(_number(spec.get("to"), "to", 10, 1_000_000))
    pause = _number(spec.get("pause"), "pause", 1.0, 3600)
    for i in range(ctx.progress + 1, to + 1):
        ctx.sleep(pause)
        ctx.progress = i
    return to


def flaky(ctx: TaskContext) -> str:
    ctx.sleep(0.3)
    if ctx.retries == 0:
        raise ConnectionError("the backend was not ready")
    return "worked on retry"


def fail(ctx: TaskContext) -> None:
    ctx.sleep(0.5)
    raise ValueError("bad input")


def setup(manager: TaskManager) -> None:
    """Register the example types on ``manager`` (submittable over HTTP)."""
    manager.register("count", count, http=True)
    manager.register("flaky", flaky, max_retries=2, retry_delay=0.3, http=True)
    manager.register("fail", fail, http=True)
