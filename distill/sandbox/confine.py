"""The layers around one sandboxed program (Linux only). Each function says what it guards.

Worker-wide (once per worker process, see server.py): `become_subreaper`, `enter_network_namespace`,
`rlimit_plan`, `landlock_ruleset`, `audit_hook`. Per program (in the forked child, in this order): `set_rlimits`,
`landlock_enforce`, `drop_privileges`, `die_with_worker`, `install_audit_hook`. docs/sandbox.md
gives the threat model.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

_libc = ctypes.CDLL(None, use_errno=True)  # the symbols the interpreter is linked with: libc

# prctl(2) options and clone(2) flags
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000

# Landlock syscalls (one number on every architecture) and rights (include/uapi/linux/landlock.h)
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return ret


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl({option})")


# ---------------------------------------------------------------- server-wide layers

def become_subreaper() -> None:
    """Orphaned descendants of a program (a fork that called setsid to leave the process group) are
    re-parented to the worker instead of init, so the worker can find and kill every one of them."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def enter_network_namespace() -> bool:
    """Move the worker (and so every program it forks) into a fresh network namespace: no interface
    but a loopback that is down, so nothing on this machine or beyond can be reached, over any
    protocol. Needs CAP_SYS_ADMIN (root outside a restricted container); False where refused."""
    return _libc.unshare(ctypes.c_int(CLONE_NEWNET)) == 0


def sandbox_identity() -> tuple[int, int, str]:
    """(uid, gid, name) programs run as: `nobody` when the worker is root (RLIMIT_NPROC does not bind
    root, and root reads every file), else the current user."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), "current user"
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid, "nobody"
    except KeyError:
        return 65534, 65534, "uid 65534"


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing, disabled or blocked."""
    ret = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(ret), 0)


# ---------------------------------------------------------------- per-program layers

def die_with_worker() -> None:
    """SIGKILL the program if its worker dies, so no program outlives the pool."""
    _prctl(PR_SET_PDEATHSIG, 9)


def rlimit_plan(cpu_seconds: int, memory_mb: int, max_processes: int, max_open_files: int,
                max_file_bytes: int) -> list[tuple[int, tuple[int, int]]]:
    """The limits `set_rlimits` applies (worked out once per worker, clamped to what it may set)."""
    wanted = {
        resource.RLIMIT_CPU: (cpu_seconds, cpu_seconds + 1),
        resource.RLIMIT_AS: (memory_mb << 20,) * 2,
        resource.RLIMIT_NPROC: (max_processes,) * 2,
        resource.RLIMIT_NOFILE: (max_open_files,) * 2,
        resource.RLIMIT_FSIZE: (max_file_bytes,) * 2,
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
    }
    plan = []
    for which, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        plan.append((which, (soft, hard)))
    return plan


def set_rlimits(plan: list[tuple[int, tuple[int, int]]]) -> None:
    """CPU time (SIGXCPU, then SIGKILL a second later), address space (allocation fails with
    MemoryError), processes and threads of the sandbox user (fork fails), open files, size of any file
    written (EFBIG); no core dumps, no locked memory, no message queues."""
    for which, limits in plan:
        resource.setrlimit(which, limits)


def _fs_rights(abi: int) -> int:
    last = {1: FS_MAKE_SYM, 2: FS_REFER, 3: FS_TRUNCATE, 4: FS_TRUNCATE}.get(abi, FS_IOCTL_DEV)
    return (last << 1) - 1


def landlock_ruleset(abi: int, read_dirs: tuple[str, ...], write_dir: str) -> int:
    """A Landlock ruleset (its file descriptor) for `landlock_enforce`: read (not write, not execute)
    only below `read_dirs` (the Python installation), read and write only below `write_dir`; every
    other path denied, whatever the file modes say. With ABI >= 4 also no TCP bind or connect; with
    ABI >= 6 no abstract unix sockets and no signals to processes outside the sandbox."""
    handled_fs = _fs_rights(abi)
    attr = _RulesetAttr(handled_fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                                   ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")
    write = handled_fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_FIFO | FS_MAKE_SOCK
                           | FS_IOCTL_DEV)
    for path, access in [(p, FS_READ_FILE | FS_READ_DIR) for p in read_dirs] + [(write_dir, write)]:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = _PathBeneathAttr(access, fd)
            _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                                 ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                                 ctypes.c_uint32(0)), f"landlock_add_rule({path})")
        finally:
            os.close(fd)
    return ruleset


def landlock_enforce(ruleset: int) -> None:
    """Confine this process and its future children to `ruleset` (kernel-enforced; cannot be undone)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                         ctypes.c_uint32(0)), "landlock_restrict_self")
    os.close(ruleset)


def drop_privileges(uid: int, gid: int) -> None:
    """Become the unprivileged sandbox user (when root): file modes apply (no /etc/shadow, no other
    process's /proc/<pid>/environ), RLIMIT_NPROC binds, no signals to the worker or the pipeline.
    setuid from root also clears every capability."""
    if os.geteuid() != 0 or uid == 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


# Audit events a PoT program never needs. Prefix match.
_DENIED_EVENTS = (
    "socket.", "ctypes.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.forkpty", "pty.", "os.kill", "os.killpg", "signal.pthread_kill", "resource.",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "webbrowser.",
    "urllib.", "ftplib.", "http.", "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.",
)
# Events whose first argument is a path that is only read, and those that change the file system
# (path arguments by position).
_READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,)}
_WRITE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.chmod": (0,),
    "os.chown": (0,), "os.symlink": (1,), "os.link": (0, 1), "os.truncate": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def audit_hook(read_dirs: tuple[str, ...], base_dir: str):
    """A Python-level guard (PEP 578) for `install_audit_hook`, built once per worker: deny sockets,
    ctypes, new processes, signals, rlimit changes and heap introspection; reads outside the
    program's folder and `read_dirs`, and writes outside the program's folder, with a clear
    PermissionError. It is not a security boundary on its own (a memory-corruption bug in CPython
    would get past it); the OS layers are. Returns (hook, folder cell): the child puts its folder
    (a path below `base_dir`, with a trailing separator) in the cell."""
    base = os.path.realpath(base_dir)
    read_prefixes = tuple(os.path.join(os.path.realpath(d), "") for d in read_dirs)
    folder = [os.path.join(base, "")]  # set per program
    realpath, join, fspath, fsdecode, getcwd = os.path.realpath, os.path.join, os.fspath, os.fsdecode, os.getcwd

    def inside(path, writes: bool) -> bool:
        if path is None:
            path = "."
        if isinstance(path, int):
            return True  # an open descriptor: its path was checked when it was opened
        full = join(realpath(join(getcwd(), fsdecode(fspath(path)))), "")
        return full.startswith(folder[0]) or (not writes and full.startswith(read_prefixes))

    def hook(event: str, args: tuple) -> None:
        if event.startswith(_DENIED_EVENTS):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if not inside(path, writes):
                raise PermissionError(f"sandbox: {'writing' if writes else 'reading'} {path!r} is not allowed")
        elif event in _READ_EVENTS or event in _WRITE_EVENTS:
            writes = event in _WRITE_EVENTS
            positions = _WRITE_EVENTS[event] if writes else _READ_EVENTS[event]
            if not all(inside(args[i], writes) for i in positions):
                raise PermissionError(f"sandbox: {event} outside the program's folder is not allowed")

    return hook, folder


def install_audit_hook(hook, folder: list[str], work_dir: str) -> None:
    """Install `hook` (from `audit_hook`) for a program in `work_dir`; it cannot be removed."""
    folder[0] = os.path.join(work_dir, "")
    sys.addaudithook(hook)
