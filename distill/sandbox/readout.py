"""Reading a program's result: the value it left in `answer`, as a float, or why there is none.

Runs inside the sandboxed process, right after the program (a sympy expression can take long to
evaluate, so this is under the same limits as the program).

    value, verdict, reason = read_answer(namespace)   # (12.0, "ok", "") or (None, "no_answer", "...")
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any


def read_answer(namespace: dict[str, Any]) -> tuple[float | None, str, str]:
    """(value, "ok", "") or (None, "no_answer", reason) from the program's global variables.

    A tuple or list gives its first element; sympy numbers (Integer, Rational, Float, sqrt(2), ...)
    and Python numbers convert to float. None, bools, text, containers, expressions with free
    symbols, complex and non-finite values are not answers.
    """
    if "answer" not in namespace:
        return None, "no_answer", "the program set no variable `answer`"
    value = namespace["answer"]
    if isinstance(value, (tuple, list)):
        if not value:
            return None, "no_answer", f"`answer` is an empty {type(value).__name__}"
        value = value[0]
    try:
        number = to_float(value)
    except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
        return None, "no_answer", f"`answer` is {describe(value)}: {exc}"[:300]
    if not math.isfinite(number):
        return None, "no_answer", f"`answer` is {number}"
    return number, "ok", ""


def to_float(value: Any) -> float:
    """The float of a number; TypeError / ValueError when `value` is not one."""
    if value is None or isinstance(value, (bool, str, bytes, dict, set)):
        raise TypeError("not a number")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, complex):
        if value.imag != 0:
            raise ValueError("complex with a non-zero imaginary part")
        return float(value.real)
    sympy = sys.modules.get("sympy")
    if sympy is not None and isinstance(value, sympy.Basic):
        return _sympy_float(sympy, value)
    if hasattr(type(value), "__float__"):  # numpy scalars and 0-d arrays, Decimal-likes
        return float(value)
    raise TypeError("not a number")


def _sympy_float(sympy, value) -> float:
    if isinstance(value, sympy.logic.boolalg.BooleanAtom) or value.is_Boolean:
        raise TypeError("a sympy boolean")
    if value.free_symbols:
        names = ", ".join(sorted(str(s) for s in value.free_symbols)[:5])
        raise ValueError(f"an expression in unsolved symbols ({names})")
    if not getattr(value, "is_number", False):
        raise TypeError("not a sympy number")
    if value.is_Rational or value.is_Float:
        return float(value)
    real, imag = value.evalf(30).as_real_imag()
    if imag != 0 and abs(float(imag)) > 1e-12 * max(1.0, abs(float(real))):
        raise ValueError("complex with a non-zero imaginary part")
    return float(real)


def describe(value: Any) -> str:
    """A short description of a value for a verdict's reason, e.g. "a str ('12 apples')"."""
    kind = type(value).__name__
    if value is None:
        return "None"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001  (a hostile __repr__: the type is enough)
        return f"a {kind}"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {kind} ({text})"
