"""Gold-answer parsing (`parse_number`) and the safe arithmetic evaluator."""

from __future__ import annotations

from fractions import Fraction

import pytest

from distill.numbers import ExpressionError, evaluate_arithmetic, evaluate_exact, parse_number


@pytest.mark.parametrize(("text", "value"), [
    ("9 (apples)", 9.0), ("14  (seats)", 14.0), ("3.5 (dollars)", 3.5), ("8 (sq. ft)", 8.0),
    ("$1,234.50", 1234.5), ("1,000,000", 1e6), ("-2", -2.0), ("+7", 7.0), ("\u22125", -5.0),
    ("3/4", 0.75), ("-(1/3)", -1 / 3), ("1 1/2", 1.5), ("50%", 50.0), (".5", 0.5), ("72.", 72.0),
    ("  42 ", 42.0), (39.0, 39.0), (7, 7.0),
])
def test_parse_number_reads_one_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "3:4", "3:30 p.m.", "5 (years old); 15 (years old)", "8; 40", "Yes", "Mrs. Hilt", "6th",
    "February 3rd", "Vendor 2", "1,00", "1/0", "", "   ", None, "12 apples and 3 pears", "2 + 3",
])
def test_parse_number_rejects_everything_else(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(("expression", "value"), [
    ("( 84.0 / 2.0 )", 42.0), ("( ( 4.0 - 2.0 ) + 3.0 )", 5.0), ("-(3 * 2)", -6.0), ("10 / 4", 2.5),
    ("( 0.1 + 0.2 ) * 10", 3.0),
])
def test_evaluate_arithmetic(expression, value):
    assert evaluate_arithmetic(expression) == value


def test_evaluation_is_exact():
    assert evaluate_exact("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate_exact("7 / 3 * 3") == 7


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "2 ** 10", "abs(-1)", "x + 1", "1 // 2", "1 % 2", "(1).real",
    "[1][0]", "'a' * 3", "1 if 1 else 2", "1 / 0", "True + 1", "", "(" * 500 + "1" + ")" * 500,
])
def test_evaluate_arithmetic_refuses_anything_else(expression):
    with pytest.raises(ExpressionError):
        evaluate_arithmetic(expression)


@pytest.mark.parametrize("text", ["1" * 5001, "1" * 400, "1" * 400 + ".5", "1" * 5001 + "/3", "1e999"])
def test_numbers_no_float_can_hold_are_not_numbers(text):
    """Too many digits for an int, or too large for a float: None, never an exception."""
    assert parse_number(text) is None


@pytest.mark.parametrize("expression", ["1e999", "1e999 - 1e999", "1" * 400 + " * 2", "1" * 5001])
def test_expressions_out_of_float_range_are_refused(expression):
    """`1e999` parses as infinity, which no Fraction holds; a 400-digit value overflows a float."""
    with pytest.raises(ExpressionError):
        evaluate_arithmetic(expression)
