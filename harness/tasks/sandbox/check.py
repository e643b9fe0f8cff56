"""The verdict, computed by the trusted launcher, never by the program (stdlib only).

The launcher runs the problem's own test code (the dataset's `check(candidate)`) in its own
process, with `candidate` a proxy: each call sends its arguments as a Python literal over a
private pipe to the contained program, which calls its function and answers with the return
value's literal. The proxy parses the answer with `ast.literal_eval`, so the test only ever
compares plain data: an object with a forged `__eq__`, a forged verdict in the program's
memory or a line on its stdout changes nothing. A program passes only by returning the right
values.

Messages on the pipes are 4-byte big-endian lengths and JSON objects, read with a deadline and a
size cap; anything else ends the check as a failure. What the launcher reports is a status
and one of the fixed reasons below, never text the program chose.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import select
import struct
import time

PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
STATUSES = (PASSED, FAILED, TIMED_OUT)
BUILTIN_ERRORS = frozenset(n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
                           and issubclass(getattr(builtins, n), BaseException))
REASONS = frozenset({
    "passed", "wrong answer", "timed out", "the program did not load",
    "the program has no entry point", "returned a value that is not plain data",
    "the program broke the protocol", "the program died", "the program raised an exception",
    "the test failed", "sandbox setup failed", "the harness failed",
    "returned a value too large to check",
    *(f"the program raised {n}" for n in BUILTIN_ERRORS),
    *(f"the program did not load ({n})" for n in BUILTIN_ERRORS),
    *(f"the test failed ({n})" for n in BUILTIN_ERRORS),
})
MAX_MESSAGE = 4 << 20  # bytes: far above any HumanEval value
# A returned value's literal is parsed by the launcher, which has no deadline of its own while
# it parses: bound the work. HumanEval's canonical answers reach 180 characters, 51 syntax
# nodes and 25 elements per collection (measured over all 164); a set of 160,000 ints that
# all hash to 0 took the launcher 26 s and a 4 MiB list 2 GB before these bounds.
MAX_ANSWER_CHARS = 64 << 10
MAX_ANSWER_NODES = 20_000
MAX_COLLECTION = 4_096  # elements of one set or dict literal (hash collisions are quadratic)


class ChannelError(Exception):
    """The other side broke the protocol, closed its end or sent too much."""


class Deadline(BaseException):
    """The program's time is up (BaseException: the test's own `except Exception` can't eat it)."""


def send(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    out = b""
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Deadline
        chunk = os.read(fd, min(n - len(out), 1 << 16))
        if not chunk:
            raise ChannelError("closed")
        out += chunk
    return out


def receive(fd: int, deadline: float | None = None) -> dict:
    (n,) = struct.unpack(">I", _read_exactly(fd, 4, deadline))
    if n > MAX_MESSAGE:
        raise ChannelError("message too large")
    try:
        obj = json.loads(_read_exactly(fd, n, deadline))
    except (ValueError, RecursionError):
        raise ChannelError("not JSON") from None
    if not isinstance(obj, dict):
        raise ChannelError("not an object")
    return obj


def one_field(msg: dict, allowed: dict[str, type]):
    """(key, value) of a message with exactly one field, of the allowed name and type."""
    if len(msg) != 1:
        raise ChannelError("not one field")
    ((key, value),) = msg.items()
    if key not in allowed or type(value) is not allowed[key]:
        raise ChannelError("unexpected field")
    return key, value


class TooLarge(ValueError):
    """A literal past the bounds above: too large to check, not evaluated."""


def literal(text: str):
    """A value the program returned, as plain data; ValueError where it is anything else,
    TooLarge where it passes the bounds (checked on the syntax tree, before any value is
    built)."""
    if len(text) > MAX_ANSWER_CHARS:
        raise TooLarge("too large")
    try:
        tree = ast.parse(text, mode="eval")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not a literal") from None
    nodes = 0
    for node in ast.walk(tree):
        nodes += 1
        size = len(node.elts) if isinstance(node, ast.Set) else (
            len(node.keys) if isinstance(node, ast.Dict) else 0)
        if nodes > MAX_ANSWER_NODES or size > MAX_COLLECTION:
            raise TooLarge("too large")
    try:
        return ast.literal_eval(tree)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not a literal") from None


class Failure(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Candidate:
    """What the test calls `candidate`: forwards each call to the contained program."""

    def __init__(self, to_program: int, from_program: int, deadline: float):
        self.to_program, self.from_program, self.deadline = to_program, from_program, deadline

    def __call__(self, *args, **kwargs):
        call = repr((args, kwargs))
        if literal(call) != (args, kwargs):  # the test passed something a literal can't carry
            raise Failure("the test failed")
        try:
            send(self.to_program, {"call": call})
            key, value = one_field(receive(self.from_program, self.deadline),
                                   {"value": str, "raised": str, "invalid": str})
        except (ChannelError, OSError):
            raise Failure("the program broke the protocol") from None
        if key == "value":
            try:
                return literal(value)
            except TooLarge:
                raise Failure("returned a value too large to check") from None
            except ValueError:
                raise Failure("returned a value that is not plain data") from None
        if key == "invalid":
            raise Failure("returned a value that is not plain data")
        # raised: the test sees the builtin exception of that name (a test may expect one)
        raise _exception(value)


def _exception(name: str) -> Exception:
    kind = getattr(builtins, name) if name in BUILTIN_ERRORS else RuntimeError
    try:
        exc = kind() if issubclass(kind, Exception) else RuntimeError()
    except TypeError:  # e.g. UnicodeDecodeError needs its five arguments
        exc = RuntimeError()
    exc.raised_by_program = name if name in BUILTIN_ERRORS else None
    return exc


def run_check(problem: dict, to_program: int, from_program: int, deadline: float) -> str:
    """Wait for the program to load, then run the problem's test; returns a reason."""
    try:
        key, value = one_field(receive(from_program, deadline),
                               {"loaded": bool, "raised": str})
    except (ChannelError, OSError):
        return "the program died"
    if key == "raised":
        return (f"the program did not load ({value})" if value in BUILTIN_ERRORS
                else "the program did not load")
    if not value:
        return "the program has no entry point"
    candidate = Candidate(to_program, from_program, deadline)
    scope: dict = {}
    try:
        exec(compile(problem["prompt"], "<prompt>", "exec"), scope)  # helpers such as `poly`
        scope[problem["entry_point"]] = candidate  # some tests call it by name (HumanEval/33)
        exec(compile(problem["test"], "<test>", "exec"), scope)
        scope["check"](candidate)
    except Failure as e:
        return e.reason
    except Deadline:
        raise
    except Exception as e:
        if hasattr(e, "raised_by_program"):
            name = e.raised_by_program
            return f"the program raised {name}" if name else "the program raised an exception"
        if isinstance(e, AssertionError):
            return "wrong answer"
        name = type(e).__name__  # the test itself failed on a returned value (e.g. None + 1)
        return f"the test failed ({name})" if name in BUILTIN_ERRORS else "the test failed"
    return "passed"


def status_of(reason: str) -> str:
    return PASSED if reason == "passed" else TIMED_OUT if reason == "timed out" else FAILED
