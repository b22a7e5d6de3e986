"""Gold answers as numbers: the answer fields of benchmark files, and safe arithmetic expressions.

`parse_number` reads a whole string that holds exactly one number, as benchmark files write their
gold answers, and returns None for anything else (so a loader can exclude the problem with a reason):

    parse_number("9 (apples)")   -> 9.0      a value with its unit in parentheses (ASDiv)
    parse_number("$1,234.50")    -> 1234.5   currency sign, thousands commas (GSM8K)
    parse_number("3/4")          -> 0.75     fractions, also "-(1/3)" and mixed numbers "1 1/2"
    parse_number("-2"), parse_number("50%")  -> -2.0, 50.0
    parse_number("3:4"), parse_number("5; 6"), parse_number("Yes")  -> None
    parse_number("1" * 400)      -> None     no float holds it (nor an int 5,001 digits long)

Reading numbers out of model outputs is another job (`distill.answers`).

`evaluate_arithmetic` computes an expression such as Distilling Step-by-Step's SVAMP label
"( 84.0 / 2.0 )" without `eval`: only number literals, + - * / and parentheses are accepted.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER = re.compile(
    rf"""
    ^(?P<sign>[-+])?\s*[$€£]?\s*
    (?:
        (?P<whole>\d+)\s+(?P<mnum>\d+)/(?P<mden>\d+)     # mixed number 1 1/2
      | \(?\s*(?P<fsign>-)?(?P<num>\d+)\s*/\s*(?P<den>\d+)\s*\)?  # fraction 3/4, -(1/3)
      | (?P<dec>{_DIGITS})                               # 1,234.50
    )
    \s*%?
    (?:\s*\([^()]*\))?      # one trailing unit in parentheses: "9 (apples)"
    \.?$
    """,
    re.VERBOSE,
)
_MINUS_CHARS = str.maketrans({"\u2212": "-", "\u2013": "-"})


def parse_number(text: str | float | None) -> float | None:
    """The single number `text` holds (see the module docstring), or None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return _parse_number(text)
    except (ValueError, OverflowError):  # beyond Python's int digit limit, or beyond a float's range
        return None


def _parse_number(text: str) -> float | None:
    match = _NUMBER.match(text.strip().translate(_MINUS_CHARS))
    if match is None:
        return None
    negative = match["sign"] == "-"
    if match["dec"] is not None:
        value = Fraction(match["dec"].replace(",", ""))
    elif match["num"] is not None:
        if int(match["den"]) == 0:
            return None
        value = Fraction(int(match["num"]), int(match["den"]))
        negative ^= match["fsign"] == "-"
    else:
        if int(match["mden"]) == 0:
            return None
        value = int(match["whole"]) + Fraction(int(match["mnum"]), int(match["mden"]))
    return float(-value if negative else value)


class ExpressionError(ValueError):
    """An expression that is not plain arithmetic, or that divides by zero."""


_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _exact(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float) and not math.isfinite(node.value):  # `1e999` parses as infinity
            raise ExpressionError("a number out of a float's range")
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _exact(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _exact(node.left), _exact(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ExpressionError("division by zero")
        return _OPERATORS[type(node.op)](left, right)
    raise ExpressionError(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


def evaluate_exact(expression: str) -> Fraction:
    """The exact value of an arithmetic expression (numbers, + - * /, parentheses only)."""
    if len(expression) > 10_000:
        raise ExpressionError("expression too long")
    try:
        return _exact(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # ValueError: a NUL byte
        raise ExpressionError(f"not an arithmetic expression: {expression[:80]!r}") from exc


def evaluate_arithmetic(expression: str) -> float:
    """`evaluate_exact` as a float: "( 84.0 / 2.0 )" -> 42.0; anything else raises ExpressionError,
    a value beyond a float's range too."""
    try:
        return float(evaluate_exact(expression))
    except OverflowError:
        raise ExpressionError(f"value out of a float's range: {expression[:40]!r}") from None
