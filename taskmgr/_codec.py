"""The codec: JSON in and out of task rows, error texts, and every argument check.

Owns: how a value becomes ``task_input``/``task_result`` text (and back), the
text of a task's error, the page tokens, and the checks that turn a bad
argument into :class:`~taskmgr.errors.InvalidArgument` *before* anything is
written. Pure functions, no state: any thread may call them.

Invariants: a number that reaches the store fits its column (ids and
milliseconds in a signed 64-bit integer, counts in 32 bits); a text holds no
lone surrogate; a name holds no control character.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgument

__all__ = [
    "MAX_ID", "MAX_SECONDS", "dumps", "encode_json", "decode_input", "error_text", "check_id", "check_name",
    "check_seconds", "check_count", "check_retries", "encode_page", "decode_page",
]

#: the largest id a 64-bit signed column holds (SQLite's and PostgreSQL's bigint)
MAX_ID = 2**63 - 1
#: the longest duration any argument may name: about 31 years (a delay, a timeout, an age); past
#: it a time in epoch milliseconds, or a date APScheduler must represent, no longer fits
MAX_SECONDS = 1e9
#: the most a 32-bit integer column (retries, restores) holds
MAX_COUNT = 2**31 - 1
_PAGE_PREFIX = "taskmgr:"
_PAGE_DIGITS = re.compile(r"[0-9]{1,19}")

# A value's JSON is json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# without its circular-reference check (a value that contains itself ends in a RecursionError,
# reported as such). The C encoder, made once, encodes a small input four times faster than
# json.dumps, which builds one per call; where it is missing the plain encoder does the work.
PLAIN = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def make_dumps() -> Callable[[Any], str]:
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        make = c_make_encoder(None, PLAIN.default, encode_basestring, None, ":", ",", False, False, False)
        sample = {"a": [1, 2.5, "\u00e9\n\"", None, True, False], "b": {"c": -1}, "": "x"}
        if "".join(make(sample, 0)) == PLAIN.encode(sample) and "".join(make("s", 0)) == '"s"':
            return lambda value: "".join(make(value, 0))
    except Exception:  # noqa: BLE001 - no C encoder, or one of another signature: the plain one
        pass
    return PLAIN.encode


dumps = make_dumps()


def encode_json(value: Any, what: str) -> tuple[str, int]:
    """The JSON text of ``value`` and its size in UTF-8 bytes.

    :raises InvalidArgument: for a value JSON cannot hold, one nested too
        deeply, and a string with a lone surrogate (UTF-8 cannot store one).
    """
    if value is None or value is True or value is False:  # the commonest results, without the encoder
        return ("null", 4) if value is None else ("true", 4) if value else ("false", 5)
    try:
        text = dumps(value)
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"task {what} holds a lone surrogate ({exc.object[exc.start]!r}), which UTF-8 text cannot store: "
            "remove it, or send such data as base64"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"task {what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"task {what} is nested too deeply, or contains itself, to be stored as JSON") from None


def decode_input(row: dict[str, Any]) -> Any:
    """The decoded ``task_input`` of a row.

    :raises InvalidArgument: for text that is not JSON, or JSON nested too deeply to decode here.
    """
    text = row["input"]
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidArgument(f"task {row['id']} has a task_input nested too deeply to decode") from None
    except (ValueError, TypeError):
        raise InvalidArgument(f"task {row['id']} has a task_input that is not valid JSON") from None


def error_text(exc: BaseException) -> str:
    """``Type: message`` of a task's error, always storable: an error whose ``str()`` fails is
    named by its type, and a lone surrogate in its message is written as an escape."""
    try:
        text = str(exc)
    except Exception as failed:  # noqa: BLE001 - the callable's exception, whatever its __str__ does
        text = f"(its message could not be read: {type(failed).__name__})"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_id(task_id: object) -> int:
    """A task id: a positive integer that fits a 64-bit column."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1:
        raise InvalidArgument(f"task id must be a positive integer, got {_short(task_id)}")
    if task_id > MAX_ID:
        raise InvalidArgument(f"task id must be at most 2**63-1 = {MAX_ID}, got {_short(task_id)}")
    return task_id


def _has_control(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value) if not value.isprintable() else False


def check_name(value: object, what: str) -> str:
    """A name, graph or graphspace: non-empty text of at most 4096 characters, storable as UTF-8,
    without control characters (they would reach operators' terminals and logs)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} must be a non-empty string, got {_short(value)}")
    if len(value) > 4096:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is 4096")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{what} holds a lone surrogate ({exc.object[exc.start]!r}), which UTF-8 text cannot store"
            ) from None
    if _has_control(value):
        raise InvalidArgument(f"{what} holds a control character: {value!r}; names must be printable text")
    return value


def check_seconds(value: object, what: str, *, positive: bool = False, optional: bool = False) -> float | None:
    """A duration in seconds: a real number (not a bool), finite, at least 0 (above 0 with
    ``positive``) and at most :data:`MAX_SECONDS`; ``None`` passes with ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "positive" if positive else "non-negative"
        raise InvalidArgument(f"{what} must be a {kind} number of seconds, got {_short(value)}")
    seconds = float(value) if not isinstance(value, int) or abs(value) < 2**53 else math.inf
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0) or seconds > MAX_SECONDS:
        kind = "positive" if positive else "non-negative"
        raise InvalidArgument(f"{what} must be a {kind} number of seconds (finite, at most {MAX_SECONDS:.0e}), "
                              f"got {_short(value)}")
    return seconds


def check_count(value: object, what: str, *, low: int = 0, high: int = MAX_COUNT, unit: str = "") -> int:
    """An integer (not a bool) between ``low`` (0 or 1) and ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        kind = "a positive number of bytes" if unit == "bytes" else (
            "a positive integer" if low == 1 else "a non-negative integer")
        raise InvalidArgument(f"{what} must be {kind} (at most {high}), got {_short(value)}")
    return value


def check_retries(max_retries: object, retry_delay: object) -> tuple[int, float]:
    """A task's retry policy: how many re-runs, and the first backoff in seconds."""
    retries = check_count(max_retries, "max_retries")
    delay = check_seconds(retry_delay, "retry_delay")
    assert delay is not None
    return retries, delay


def _short(value: object) -> str:
    """``repr`` of a bad value, cut to a readable length (an int of 5,000 digits has no repr here)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"  # type: ignore[attr-defined]
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def encode_page(after: int) -> str:
    """The opaque token of the page that starts after task id ``after``."""
    return base64.urlsafe_b64encode(f"{_PAGE_PREFIX}{after}".encode()).decode().rstrip("=")


def decode_page(token: str) -> int:
    """The task id a page token starts after (0 for ``""``, the first page).

    :raises InvalidArgument: for anything :func:`encode_page` did not make.
    """
    if token == "":
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        digits = raw[len(_PAGE_PREFIX):]
        if raw.startswith(_PAGE_PREFIX) and _PAGE_DIGITS.fullmatch(digits) and int(digits) <= MAX_ID:
            return int(digits)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgument(
        f"invalid page token {_short(token)}: pass the 'page' value of the previous answer, or '' for the first page"
    )
