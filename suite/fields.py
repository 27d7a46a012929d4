"""Range checks for configuration dataclasses (recipe, data, method options): plain Python, no pydantic, so the
same limits hold wherever a configuration is built. A violation is a ``FieldError`` naming the field."""
from __future__ import annotations

import math


class FieldError(ValueError):
    """A value outside what a field allows; ``field`` is its name within its section (e.g. ``epochs``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_number(obj, name: str, low: float | None = None, high: float | None = None, *, above: bool = False,
                 integer: bool = False) -> None:
    """``obj.<name>`` (None passes) must be a finite number (an integer with ``integer``) with ``low <= value``
    (``low < value`` with ``above``) and ``value <= high``."""
    value = getattr(obj, name)
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (low is None or (value > low if above else value >= low)) and (high is None or value <= high)
    if not ok and low is not None and low == high:
        raise FieldError(name, f"must be {low:g}, got {value!r}")
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bounds = [f"{'>' if above else '>='} {low:g}" if low is not None else "", f"<= {high:g}" if high is not None else ""]
        raise FieldError(name, f"must be {kind} {' and '.join(b for b in bounds if b)}, got {value!r}".rstrip())


def check_distinct(name: str, values) -> None:
    repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
    if repeated:
        raise FieldError(name, f"must not repeat a value, got {list(values)} ({', '.join(map(str, repeated))} twice)")
