"""Service hardening (issue 11): typed worker messages, browser/rebinding protection, server-side
caps, job-local scratch files, 4xx for malformed input, doctor single flight, no internals in answers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from engine.service import messages as M


# --- typed worker messages (no pickle from a worker) ------------------------------------------------
def test_messages_round_trip():
    for msg in (
        M.Hello({"pid": 1, "backends": ["cpu"]}),
        M.Progress(3, "bake", 0.5, "half"),
        M.Done(3, {"bake": 1.5}),
        M.Failed(3, {"code": "bad_input", "message": "x", "hint": None}, "load"),
        M.Cancelled(3, "bake", "cancelled"),
        M.Stop(),
        M.JobRequest(seq=1, id="a" * 32, kind="bake", input="/j/in.glb", partial="/j/p.glb", output="/j/r.glb",
                     report="/j/r.json", scratch="/j/scratch", options={"faces": 10}),
    ):
        assert M.decode(M.encode(msg)) == msg
    assert json.loads(M.encode(M.Progress(1, "bake", 1, "")))["type"] == "progress"


@pytest.mark.parametrize("data", [
    b"\x80\x04\x95",  # a pickle
    b"not json",
    b"[1, 2]",
    b'{"type": "exec", "seq": 1}',
    b'{"type": "progress", "seq": "1", "stage": "bake", "fraction": 0.1, "message": ""}',
    b'{"type": "progress", "seq": 1, "stage": "bake", "fraction": 0.1, "message": "", "extra": 1}',
    b'{"type": "done"}',
    b'{"type": "hello", "info": ' + b"[" * 100000 + b"]" * 100000 + b"}",
])
def test_messages_refuse_anything_else(data):
    with pytest.raises(M.MessageError):
        M.decode(data)


def test_a_pickled_object_on_the_pipe_is_never_unpickled():
    a, b = multiprocessing.Pipe()

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    a.send(Boom())  # what a compromised worker could write
    with pytest.raises(M.MessageError):
        M.recv(b)
