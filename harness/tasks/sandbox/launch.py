"""Runs ONE program; started by `harness.tasks.sandbox` as `python -I -S -B launch.py`, in a
session of its own, with the job as JSON on stdin:
{"program", "problem": {"prompt", "test", "entry_point"}, "timeout", "limits",
"scratch" (an empty folder the harness made and removes), "cgroup" (a name for its cgroup),
"user_namespace" (optional: the unprivileged path even as root)}.

The launcher is trusted and stays outside the program: it enters new namespaces itself, forks
the program's process (PID 1 there), which confines itself (`isolation.confine_self`) and execs
a fresh interpreter running `runner.py`; the launcher then runs the problem's test against it
over two private pipes (`check.run_check`), under a SIGALRM watchdog that ends it (and so the
program) at the deadline whatever it is doing, and prints one JSON line on its own stdout, which
the program cannot reach: {"status", "reason", "isolation"}.

Stdlib only: it runs with `python -I -S -B` and imports its two siblings by path.
"""

import json
import os
import signal
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # -I leaves the script's folder off sys.path

import check  # noqa: E402
import isolation  # noqa: E402

RUNNER = open(os.path.join(HERE, "runner.py")).read()
SETUP_S = 10.0  # for the program's process to confine itself and exec


def _close_others(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _program_process(iso, job, paths, fds) -> None:
    """The forked child: confine, then exec the runner. Reports its layers on `setup`."""
    calls, answers, setup = fds
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # nothing of the program reaches the launcher's stdout/stderr
        os.close(null)
        _close_others({calls, answers, setup})
        os.chdir(paths["work"])
        isolation.confine_self(iso, isolation.Limits(**job["limits"]), paths["work"],
                               paths["cgroup"], paths["read"])
        os.set_inheritable(calls, True)
        os.set_inheritable(answers, True)
        check.send(setup, {"layers": iso.layers})  # `setup` is close-on-exec: EOF means exec ran
        env = {"PATH": "/nonexistent", "HOME": paths["work"], "TMPDIR": paths["work"],
               "LANG": "C.UTF-8"}
        os.execve(paths["python"], [paths["python"], "-I", "-S", "-B", "-c", RUNNER,
                                    str(calls), str(answers)], env)
    except BaseException as e:
        try:
            check.send(setup, {"error": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(127)


def _await_exec(setup: int) -> dict:
    """The program process's layers, once it has exec'd; raises RuntimeError if it could not."""
    msg = check.receive(setup, time.monotonic() + SETUP_S)
    if "error" in msg:
        raise RuntimeError(msg["error"])
    try:
        more = check.receive(setup, time.monotonic() + SETUP_S)
    except check.ChannelError:
        return msg["layers"]  # closed by exec
    raise RuntimeError(more.get("error", "setup protocol"))


WATCHDOG_GRACE_S = 1.0  # after the deadline: the check's own Deadline reports "timed out" first


def arm_watchdog(seconds: float) -> None:
    """SIGALRM, at its default action, ends the launcher `seconds` from now whatever its main
    thread is doing (a parse in C holds the GIL: neither a Python handler nor a thread could
    run); the program dies with it (its parent-death signal), and the harness reports the
    launcher's SIGALRM death as "timed out". 0 disarms it."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def main() -> None:
    job = json.loads(sys.stdin.read())
    iso = isolation.Isolation()
    top = job["scratch"]
    os.chmod(top, 0o711)  # the program's uid may pass through, not list
    work = os.path.join(top, "work")
    os.mkdir(work, 0o700)
    prefix = os.path.realpath(sys.base_prefix)
    python = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    paths = {"work": work, "python": python,
             "read": isolation.read_rules(prefix, stdlib, python)}
    pid = None
    reason, layers = "sandbox setup failed", {}
    try:
        isolation.enter_namespaces(iso, job.get("user_namespace", False))
        isolation.expose_python(iso, prefix, os.path.join(top, "stage"))
        paths["cgroup"] = isolation.pids_cgroup(iso, job["cgroup"], 64)
        calls_r, calls_w = os.pipe()
        answers_r, answers_w = os.pipe()
        setup_r, setup_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(calls_w), os.close(answers_r), os.close(setup_r)
            _program_process(iso, job, paths, (calls_r, answers_w, setup_w))
        os.close(calls_r), os.close(answers_w), os.close(setup_w)
        try:
            layers = _await_exec(setup_r)
        except (RuntimeError, check.ChannelError, check.Deadline) as e:
            print(f"rad sandbox: setup failed: {e}", file=sys.stderr)
            layers = dict(iso.layers)
        else:
            deadline = time.monotonic() + job["timeout"]
            arm_watchdog(job["timeout"] + WATCHDOG_GRACE_S)
            try:
                check.send(calls_w, {"program": job["program"],
                                     "entry_point": job["problem"]["entry_point"]})
                reason = check.run_check(job["problem"], calls_w, answers_r, deadline)
            except check.Deadline:
                reason = "timed out"
            except OSError:
                reason = "the program died"
            finally:
                arm_watchdog(0)
    finally:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)  # PID 1 of its namespace: everything it left dies
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)  # the harness then removes the cgroup and the scratch folder
    print(json.dumps({"status": check.status_of(reason), "reason": reason, "isolation": layers}))


if __name__ == "__main__":
    main()
