"""The PoT sandbox on ordinary programs: verdicts, the `answer` read-out, order, workers, the CLI.

Hostile programs are in test_sandbox_hostile.py.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from distill.sandbox import VERDICTS, SandboxLimits, SandboxPool, SandboxResult, run_program
from distill.sandbox import pool as pool_module
from distill.sandbox.pool import imported_modules
from distill.sandbox.readout import read_answer

SYMPY_PROGRAM = """from sympy import Symbol, Eq, solve
fish_before = Symbol('fish_before')
equation = Eq(fish_before + fish_before - 4, 20)
answer = solve(equation, fish_before)[0] - 4
"""


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxLimits(timeout_s=3.0, cpu_seconds=3), workers=2) as pool:
        yield pool


@pytest.mark.parametrize("code, answer", [
    ("shirts = 3\nprice = 20\nanswer = shirts * price * 1.1", 66.0),
    ("import math\nanswer = math.ceil(480 / 120) * 3", 12.0),
    (SYMPY_PROGRAM, 8.0),
    ("from sympy import Rational\nanswer = Rational(3, 4)", 0.75),
    ("from sympy import sqrt\nanswer = sqrt(16)", 4.0),
    ("answer = (5, 6)", 5.0),
    ("answer = [7.5, 'x']", 7.5),
    ("from fractions import Fraction\nanswer = Fraction(1, 4)", 0.25),
    ("answer = 2 + 0j", 2.0),
    ("def f():\n    return 41\nanswer = f() + 1", 42.0),
    ("print('thinking...')\nanswer = 1", 1.0),
    ("import sys\nanswer = 9\nsys.exit(0)", 9.0),  # a clean exit after the answer is a normal end
    ("if __name__ == '__main__':\n    answer = 3", 3.0),
])
def test_ok_programs(pool, code, answer):
    result = pool.run(code)
    assert (result.verdict, result.answer, result.error) == ("ok", answer, ""), result


@pytest.mark.parametrize("code, verdict, reason", [
    ("x = 3", "no_answer", "no variable `answer`"),
    ("answer = None", "no_answer", "None"),
    ("answer = True", "no_answer", "bool"),
    ("answer = '42 apples'", "no_answer", "str"),
    ("answer = []", "no_answer", "empty list"),
    ("answer = {'x': 1}", "no_answer", "dict"),
    ("answer = float('nan')", "no_answer", "nan"),
    ("answer = 10 ** 400", "no_answer", "int"),
    ("answer = 1 + 2j", "no_answer", "complex"),
    ("from sympy import Symbol\nanswer = Symbol('x') + 1", "no_answer", "unsolved symbols (x)"),
    ("from sympy import Symbol, solve\nx = Symbol('x')\nanswer = solve(x**2 + 1, x)", "no_answer", "complex"),
    ("answer = 1 / 0", "exec_error", "ZeroDivisionError: division by zero (line 1)"),
    ("x = 1\nraise ValueError('boom')", "exec_error", "ValueError: boom (line 2)"),
    ("answer = input()", "exec_error", "EOFError"),
    ("import not_a_module_anywhere", "exec_error", "ModuleNotFoundError"),
    ("answer = (", "bad_format", "SyntaxError"),
    ("answer = 1\x00", "bad_format", "null bytes"),
])
def test_failing_programs_get_a_verdict_and_a_reason(pool, code, verdict, reason):
    result = pool.run(code)
    assert result.verdict == verdict and result.answer is None, result
    assert reason in result.error, result


def test_a_traceback_shows_the_programs_own_line(pool):
    result = pool.run("total = 10\nshare = total / 0\nanswer = share")
    assert result.verdict == "exec_error" and "(line 2)" in result.error
    assert "share = total / 0" in result.stderr_tail and "ZeroDivisionError" in result.stderr_tail


def test_run_many_keeps_order_across_workers_and_kinds(pool):
    codes = []
    for i in range(40):
        if i % 5 == 0:
            codes.append(f"from sympy import Rational\nanswer = Rational({i}, 2)")
        elif i % 7 == 0:
            codes.append("answer = undefined_name")
        else:
            codes.append(f"import math\nanswer = math.sqrt({i * i})")
    results = pool.run_many(codes)
    assert len(results) == len(codes)
    for i, result in enumerate(results):
        if i % 5 == 0:
            assert (result.verdict, result.answer) == ("ok", i / 2)
        elif i % 7 == 0:
            assert result.verdict == "exec_error" and "NameError" in result.error
        else:
            assert (result.verdict, result.answer) == ("ok", float(i))
    assert pool.run_many([]) == []


def test_results_are_plain_dataclasses(pool):
    result = pool.run("answer = 2")
    assert isinstance(result, SandboxResult) and result.verdict in VERDICTS and result.seconds > 0
    assert set(result.to_dict()) == {"answer", "verdict", "error", "stderr_tail", "seconds"}
    assert json.loads(json.dumps(result.to_dict()))["answer"] == 2.0


def test_non_text_is_bad_format(pool):
    assert pool.run_many([None, b"answer = 1"])[1].verdict == "bad_format"


def test_programs_do_not_share_state(pool):
    pool.run_many(["import math\nmath.pi = 3\nopen('note.txt', 'w').write('x')\nanswer = 1"] * 4)
    result = pool.run("import math, os\nanswer = math.pi + len(os.listdir('.'))")
    assert result.answer == math.pi


def test_programs_run_with_an_empty_environment(pool):
    assert pool.run("import os\nanswer = len(os.environ)").answer == 0.0


def test_routing_by_imports(pool):
    assert imported_modules("import math, os.path as p\nfrom sympy import solve\n  import re  # x") == \
        {"math", "os", "sympy", "re"}
    assert imported_modules("x = 'no imports here'") == set()
    assert pool.kind_for("import math\nanswer = math.pi") == "light"
    assert pool.kind_for(SYMPY_PROGRAM) == "full"
    assert pool.kind_for("import statistics") == "full"


def test_sympy_imported_without_a_statement_still_works(pool):
    assert pool.kind_for("answer = __import__('sym' + 'py').Rational(1, 8)") == "full"
    result = pool.run("answer = __import__('sym' + 'py').Rational(1, 8)")
    assert (result.verdict, result.answer) == ("ok", 0.125), result


def test_a_dead_worker_is_replaced(pool):
    slot = pool._slots[0]
    for worker in list(slot.values()):
        worker.proc.kill()
        worker.proc.wait()
    results = pool.run_many(["answer = 1", SYMPY_PROGRAM, "answer = 3"])
    assert all(r.verdict in VERDICTS for r in results)
    assert [r.answer for r in pool.run_many(["answer = 1", SYMPY_PROGRAM, "answer = 3"])] == [1.0, 8.0, 3.0]


def test_a_worker_kind_that_cannot_start_gives_verdicts(monkeypatch):
    real_init = pool_module._WorkerProcess.__init__

    def broken_full(self, kind, limits, tmp_root):
        real_init(self, kind, limits, tmp_root)
        if kind == "full":
            self.proc.kill()

    monkeypatch.setattr(pool_module._WorkerProcess, "__init__", broken_full)
    with SandboxPool(SandboxLimits(timeout_s=3), workers=2) as pool:
        results = pool.run_many(["answer = 1", SYMPY_PROGRAM, "answer = 3"])
        assert [r.verdict for r in results] == ["ok", "exec_error", "ok"]
        assert "failed to start" in results[1].error
        assert pool.run("answer = 4").answer == 4.0


def test_an_interrupted_call_leaves_no_stale_answers(monkeypatch):
    with SandboxPool(SandboxLimits(timeout_s=3), workers=2) as pool:
        real_receive, calls = pool_module.wire.receive, []

        def interrupted_once(fd):
            calls.append(fd)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real_receive(fd)

        monkeypatch.setattr(pool_module.wire, "receive", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            pool.run_many(["answer = 100", "answer = 200"])  # both in flight when interrupted
        assert [r.answer for r in pool.run_many([f"answer = {i}" for i in range(6)])] == [0, 1, 2, 3, 4, 5]


def test_closed_pool_refuses_work():
    pool = SandboxPool(SandboxLimits(), workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run("answer = 1")


def test_run_program_one_off():
    result = run_program("answer = 6 * 7", SandboxLimits(timeout_s=2))
    assert (result.verdict, result.answer) == ("ok", 42.0)


def test_cli_sandbox_run(tmp_path, capsys):
    from flows.cli import main

    program = tmp_path / "program.py"
    program.write_text("apples = 5\nanswer = apples * 2\n")
    assert main(["sandbox", "run", str(program), "--timeout", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"] == "ok" and printed["answer"] == 10.0
    assert set(printed) == {"answer", "verdict", "error", "stderr_tail", "seconds"}


@pytest.mark.parametrize("value, expected", [
    (3, 3.0), (2.5, 2.5), (Fraction(1, 2), 0.5), ((4, 5), 4.0), ([6], 6.0), (-0.0, 0.0),
])
def test_read_answer_numbers(value, expected):
    assert read_answer({"answer": value}) == (expected, "ok", "")


@pytest.mark.parametrize("value", [None, True, False, "1", b"1", {}, set(), (), [], float("inf"), object()])
def test_read_answer_non_numbers(value):
    number, verdict, reason = read_answer({"answer": value})
    assert (number, verdict) == (None, "no_answer") and reason.startswith("`answer` is")
