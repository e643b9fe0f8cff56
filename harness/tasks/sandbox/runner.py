"""The contained side: a fresh interpreter that loads the program and answers calls.

Its source is passed with `python -I -S -B -c`, so it reads no file of ours. argv: the fd it
reads calls from, the fd it answers on. First message in: {"program", "entry_point"}; it
answers {"loaded": true} (or {"raised": name}), then for each {"call": literal of (args,
kwargs)} answers {"value": literal} / {"raised": exception name} / {"invalid": why}.

Nothing here is trusted: the program runs in this same process and may rewrite any of it.
The launcher checks every answer as data (`check.py`).
"""

import ast
import json
import os
import struct
import sys

PLAIN = (int, float, complex, str, bytes, bool, type(None))


def send(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd):
    head = b""
    while len(head) < 4:
        chunk = os.read(fd, 4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = os.read(fd, n - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body)


def plain(value, depth=0):
    if depth > 50:
        return False
    if type(value) in PLAIN:
        return True
    if type(value) in (list, tuple, set, frozenset):
        return all(plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    return False


def main():
    calls, answers = int(sys.argv[1]), int(sys.argv[2])
    job = receive(calls)
    scope = {}
    try:
        exec(compile(job["program"], "<program>", "exec"), scope)
    except BaseException as e:
        send(answers, {"raised": type(e).__name__})
        return
    fn = scope.get(job["entry_point"])
    send(answers, {"loaded": callable(fn)})
    while True:
        msg = receive(calls)
        if msg is None:
            return
        args, kwargs = ast.literal_eval(msg["call"])
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            send(answers, {"raised": type(e).__name__})
            continue
        if not plain(value):
            send(answers, {"invalid": "not plain data"})
            continue
        send(answers, {"value": repr(value)})


main()
