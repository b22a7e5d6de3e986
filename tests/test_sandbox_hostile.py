"""Hostile programs: each gets a verdict in time, does no harm, and the pool then serves the next one.

Every test runs twice: with the in-process audit hook (the default), and with the operating-system
layers alone (`audit_hook=False`), which must hold by themselves. A layer this machine lacks (no
Landlock, not root) skips the checks that rely on it in the second mode; `pool.isolation` says which
layers are active (docs/sandbox.md).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from distill.sandbox import SandboxLimits, SandboxPool

REPO_ROOT = Path(__file__).resolve().parents[1]
# Wall-clock limit with room for a fresh sympy import on a busy 2-core machine; the CPU limit is
# what stops runaway programs first.
LIMITS = {"timeout_s": 3.0, "cpu_seconds": 2, "memory_mb": 512, "max_output_kb": 16, "max_processes": 8}


@pytest.fixture(scope="module", params=["audit_hook", "os_layers_only"])
def pool(request):
    with SandboxPool(SandboxLimits(**LIMITS, audit_hook=request.param == "audit_hook"), workers=2) as pool:
        yield pool


def needs(pool: SandboxPool, *layers: str) -> None:
    """Skip where the operating system alone must stop the program but lacks the layer that does."""
    if pool.limits.audit_hook:
        return
    iso = pool.isolation
    have = {"landlock": iso["landlock_abi"] >= 1, "landlock_tcp": iso["landlock_abi"] >= 4,
            "netns": iso["network_namespace"], "other_user": not iso["user"].startswith("current user")}
    missing = [layer for layer in layers if not have[layer]]
    if missing:
        pytest.skip(f"this machine lacks {', '.join(missing)} (isolation: {iso})")


def sandbox_processes() -> set[int]:
    """Processes of the sandbox user `nobody` (the programs' user when the tests run as root)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            if int(uid) == 65534 and "State:\tZ" not in status:
                found.add(int(entry))
    return found


def run_hostile(pool: SandboxPool, code: str, verdicts: set[str]):
    """Run `code` and check its verdict, that it left no process behind, and that the pool still
    answers ordinary programs correctly."""
    before = sandbox_processes() if os.geteuid() == 0 else set()
    result = pool.run(code)
    assert result.verdict in verdicts, result
    if os.geteuid() == 0:
        assert sandbox_processes() <= before, "the program left processes behind"
    after = pool.run_many(["apples = 5\nanswer = apples * 2",
                           "from sympy import Symbol, solve\nx = Symbol('x')\nanswer = solve(2 * x - 8, x)[0]"])
    assert [(r.verdict, r.answer) for r in after] == [("ok", 10.0), ("ok", 4.0)], after
    return result


@pytest.fixture
def outside(tmp_path_factory):
    """A folder outside the sandbox that file modes alone would open to anyone: a world-readable
    file, a world-writable subfolder. Only Landlock (or the audit hook) keeps programs out."""
    base = Path(tempfile.mkdtemp(prefix="siked-outside-", dir="/tmp"))
    base.chmod(0o755)
    (base / "secret.txt").write_text("top secret\n")
    (base / "secret.txt").chmod(0o644)
    (base / "drop").mkdir()
    (base / "drop").chmod(0o777)
    yield base
    for path in sorted(base.rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    base.rmdir()


# ---------------------------------------------------------------- time, processes, memory, output

def test_infinite_loop_times_out(pool):
    result = run_hostile(pool, "while True:\n    pass", {"timeout"})
    assert "wall clock" in result.error or "CPU time" in result.error


def test_sleeping_forever_times_out(pool):
    result = run_hostile(pool, "import time\ntime.sleep(3600)", {"timeout"})
    assert "wall clock" in result.error  # asleep, it uses no CPU: only the wall clock ends it


def test_fork_bomb(pool):
    run_hostile(pool, "import os\nwhile True:\n    os.fork()", {"exec_error", "timeout"})


def test_forked_processes_that_leave_the_group_are_killed(pool):
    code = ("import os, time\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        os.setsid()\n"
            "        time.sleep(3600)\n"
            "answer = 1")
    run_hostile(pool, code, {"ok", "exec_error"})  # sandbox_processes() checks nothing is left


def test_no_new_programs_can_be_executed(pool):
    needs(pool, "landlock")
    result = run_hostile(pool, "import os\nos.execv('/bin/sh', ['sh', '-c', 'exit 0'])", {"exec_error"})
    assert "PermissionError" in result.error


def test_memory_bomb_at_once(pool):
    result = run_hostile(pool, "blob = bytearray(8 * 1024 ** 3)\nanswer = 1", {"exec_error"})
    assert "MemoryError" in result.error


def test_memory_bomb_growing(pool):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 1024 ** 2))"
    result = run_hostile(pool, code, {"exec_error", "timeout"})  # zeroing 512 MiB takes a while
    assert result.verdict == "timeout" or "MemoryError" in result.error


def test_output_flood(pool):
    result = run_hostile(pool, "while True:\n    print('x' * 1000)", {"exec_error"})
    assert "KiB of output" in result.error


def test_stderr_flood(pool):
    result = run_hostile(pool, "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)", {"exec_error"})
    assert "KiB of output" in result.error and len(result.stderr_tail) <= 2000


def test_large_file_in_its_own_folder(pool):
    result = run_hostile(pool, "open('big.bin', 'wb').write(b'x' * 10 ** 6)\nanswer = 1", {"exec_error"})
    assert "File too large" in result.error or "SIGXFSZ" in result.error


def test_deep_recursion(pool):
    result = run_hostile(pool, "def f(n):\n    return f(n + 1)\nanswer = f(0)", {"exec_error"})
    assert "RecursionError" in result.error


def test_deep_recursion_past_the_c_stack(pool):
    # Through map(), each level is a C call: with the limit lifted, the C stack overflows.
    code = "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return list(map(f, [n + 1]))\nanswer = f(0)"
    result = run_hostile(pool, code, {"exec_error"})
    assert "crashed" in result.error or "MemoryError" in result.error


def test_segfault_through_ctypes(pool):
    result = run_hostile(pool, "import ctypes\nctypes.string_at(0)\nanswer = 1", {"exec_error"})
    assert ("not allowed" in result.error) if pool.limits.audit_hook else ("SIGSEGV" in result.error)


@pytest.mark.parametrize("code, reason", [
    ("import sys\nsys.exit(3)", "sys.exit(3)"),
    ("raise SystemExit('bye')", "sys.exit('bye')"),
    ("import os\nanswer = 5\nos._exit(0)", "exited with status 0"),
    ("import os\nos._exit(7)", "exited with status 7"),
])
def test_early_exits(pool, code, reason):
    result = run_hostile(pool, code, {"exec_error"})
    assert reason in result.error


def test_cannot_kill_its_worker(pool):
    needs(pool, "other_user")
    result = run_hostile(pool, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nanswer = 1",
                         {"exec_error"})
    assert "PermissionError" in result.error


def test_cannot_reach_the_pools_channel(pool):
    code = ("import os\nopen_fds = 0\n"
            "for fd in range(4, 64):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "        open_fds += 1\n"
            "    except OSError:\n"
            "        pass\n"
            "answer = open_fds")
    assert run_hostile(pool, code, {"ok"}).answer == 0.0


# ---------------------------------------------------------------- files and the environment

@pytest.mark.parametrize("target", ["/etc/shadow", "repo", "outside", "/proc/1/environ"])
def test_cannot_read_files_outside_its_folder(pool, outside, target):
    path = {"repo": str(REPO_ROOT / "pyproject.toml"), "outside": str(outside / "secret.txt")}.get(target, target)
    if target in ("repo", "outside"):
        needs(pool, "landlock")  # world-readable: file modes alone would allow it
    result = run_hostile(pool, f"answer = len(open({path!r}).read())", {"exec_error"})
    assert "PermissionError" in result.error or "FileNotFoundError" in result.error


def test_cannot_read_through_a_symlink_in_its_folder(pool, outside):
    needs(pool, "landlock")
    code = f"import os\nos.symlink({str(outside / 'secret.txt')!r}, 'link')\nanswer = len(open('link').read())"
    result = run_hostile(pool, code, {"exec_error"})
    assert "PermissionError" in result.error


@pytest.mark.parametrize("folder", ["/", "repo"])
def test_cannot_list_folders_outside(pool, folder):
    needs(pool, "landlock")
    path = str(REPO_ROOT) if folder == "repo" else folder
    result = run_hostile(pool, f"import os\nanswer = len(os.listdir({path!r}))", {"exec_error"})
    assert "PermissionError" in result.error


def test_environment_secrets_do_not_reach_programs(monkeypatch):
    monkeypatch.setenv("SIKED_SANDBOX_TEST_SECRET", "hunter2-do-not-leak")
    code = ("import os\n"
            "texts = list(os.environ) + list(os.environ.values())\n"
            f"for path in ['/proc/self/environ', '/proc/%d/environ' % os.getppid(), '/proc/{os.getpid()}/environ']:\n"
            "    try:\n"
            "        texts.append(open(path, 'rb').read().decode('latin-1'))\n"
            "    except OSError:\n"
            "        pass\n"
            "answer = float(any('hunter2' in text or 'SIKED_SANDBOX' in text for text in texts))")
    for audit_hook in (True, False):
        with SandboxPool(SandboxLimits(**LIMITS, audit_hook=audit_hook), workers=1) as pool:
            result = pool.run(code)
        assert (result.verdict, result.answer) == ("ok", 0.0), result


@pytest.mark.parametrize("target", ["outside", "tmp", "repo"])
def test_cannot_write_outside_its_folder(pool, outside, target):
    needs(pool, "landlock")
    path = {"outside": outside / "drop" / "escaped.txt", "tmp": Path(f"/tmp/siked-escape-{os.getpid()}.txt"),
            "repo": REPO_ROOT / "sandbox-escape.txt"}[target]
    try:
        result = run_hostile(pool, f"open({str(path)!r}, 'w').write('escaped')\nanswer = 1", {"exec_error"})
        assert "PermissionError" in result.error
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_cannot_make_folders_outside(pool, outside):
    needs(pool, "landlock")
    result = run_hostile(pool, f"import os\nos.mkdir({str(outside / 'drop' / 'new')!r})\nanswer = 1", {"exec_error"})
    assert "PermissionError" in result.error and not (outside / "drop" / "new").exists()


def test_can_use_its_own_folder(pool):
    code = ("import os\nos.mkdir('work')\nopen('work/n.txt', 'w').write('41')\n"
            "answer = int(open('work/n.txt').read()) + 1")
    assert run_hostile(pool, code, {"ok"}).answer == 42.0


# ---------------------------------------------------------------- network

@pytest.fixture
def listeners():
    """A TCP listener and a UDP socket on the loopback that programs must not reach."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.settimeout(0.5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    yield tcp, udp
    tcp.close()
    udp.close()


def assert_nothing_arrived(tcp: socket.socket, udp: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        tcp.accept()
    with pytest.raises(TimeoutError):
        udp.recvfrom(64)


def test_python_sockets_reach_nothing(pool, listeners):
    needs(pool, "landlock_tcp", "netns")
    tcp, udp = listeners
    code = (f"import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)\n"
            f"answer = 1")
    result = run_hostile(pool, code, {"exec_error"})
    assert any(e in result.error for e in ("PermissionError", "ModuleNotFoundError", "OSError"))
    assert_nothing_arrived(tcp, udp)


def test_raw_libc_sockets_reach_nothing(pool, listeners):
    """Straight to the kernel through ctypes, past Python's socket module (and, with the audit hook
    off, past every Python-level check): TCP connect and a UDP datagram to the loopback."""
    needs(pool, "landlock_tcp", "netns")
    tcp, udp = listeners
    code = ("import ctypes, struct\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def address(port):\n"
            "    return struct.pack('=H', 2) + struct.pack('!H', port) + bytes([127, 0, 0, 1]) + bytes(8)\n"
            "tcp = libc.socket(2, 1, 0)\n"
            f"connected = libc.connect(tcp, address({tcp.getsockname()[1]}), 16)\n"
            "udp = libc.socket(2, 2, 0)\n"
            f"sent = libc.sendto(udp, b'hello', 5, 0, address({udp.getsockname()[1]}), 16)\n"
            "answer = connected + sent")
    result = run_hostile(pool, code, {"exec_error", "ok"})
    if result.verdict == "ok":
        assert result.answer == -2.0  # both calls failed
    assert_nothing_arrived(tcp, udp)
