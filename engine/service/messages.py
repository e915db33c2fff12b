"""Typed messages between the supervisor (HTTP process) and a worker process.

Every message crosses the pipe as one UTF-8 JSON object (``Connection.send_bytes``),
never as a pickle: the HTTP process must not unpickle anything a worker wrote, since
a worker runs native code on client-supplied files and could be compromised. A
message is ``{"type": <MessageType>, ...fields}``; ``decode`` checks the type and
the field types and raises ``MessageError`` for anything else, which the
supervisor treats like a dead worker.

supervisor -> worker: ``JobRequest`` | ``Stop``
worker -> supervisor: ``Hello`` | ``Progress`` | ``Done`` | ``Failed`` | ``Cancelled``
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Optional, Union

# A message bigger than this is refused (a progress line is < 1 KB, a hello a few KB).
MAX_MESSAGE_BYTES = 1 << 20


class MessageError(ValueError):
    """A message that is not valid JSON, not a known type, or has fields of the wrong type."""


class MessageType(str, Enum):
    JOB = "job"
    STOP = "stop"
    HELLO = "hello"
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON types only (anything else becomes its ``str``)."""
    return json.loads(json.dumps(obj, default=str))


@dataclass(frozen=True)
class JobRequest:
    seq: int
    id: str
    kind: str
    input: str
    partial: str
    output: str
    report: str
    scratch: str
    options: dict = field(default_factory=dict)
    recon_options: Optional[dict] = None
    fault: Optional[str] = None
    mask: Optional[str] = None
    source_name: Optional[str] = None
    target: Optional[str] = None  # kind=bake: the artist's low-poly to bake onto (a path in the job dir)
    TYPE = MessageType.JOB


@dataclass(frozen=True)
class Stop:
    TYPE = MessageType.STOP


@dataclass(frozen=True)
class Hello:
    info: dict
    TYPE = MessageType.HELLO


@dataclass(frozen=True)
class Progress:
    seq: int
    stage: str
    fraction: float
    message: str = ""
    TYPE = MessageType.PROGRESS


@dataclass(frozen=True)
class Done:
    seq: int
    timings: dict = field(default_factory=dict)
    TYPE = MessageType.DONE


@dataclass(frozen=True)
class Failed:
    seq: int
    error: dict
    stage: str
    TYPE = MessageType.FAILED


@dataclass(frozen=True)
class Cancelled:
    seq: int
    stage: str
    message: str = ""
    TYPE = MessageType.CANCELLED


Message = Union[JobRequest, Stop, Hello, Progress, Done, Failed, Cancelled]
_CLASSES = {c.TYPE: c for c in (JobRequest, Stop, Hello, Progress, Done, Failed, Cancelled)}

# The JSON type each annotation accepts (``Optional[...]`` also accepts None).
_TYPES = {"int": (int,), "str": (str,), "float": (int, float), "dict": (dict,)}


def _check(cls, name: str, annotation: str, value: Any) -> Any:
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional["):-1] if optional else annotation
    if value is None and optional:
        return None
    ok = _TYPES[base]
    if isinstance(value, bool) or not isinstance(value, ok):
        raise MessageError(f"{cls.TYPE.value}.{name}: expected {annotation}, got {type(value).__name__}")
    return float(value) if base == "float" else value


def encode(msg: Message) -> bytes:
    d = {"type": msg.TYPE.value}
    d.update(plain(asdict(msg)))
    return json.dumps(d).encode("utf-8")


def decode(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError(f"not a JSON message: {e.__class__.__name__}") from None
    if not isinstance(d, dict):
        raise MessageError("a message is a JSON object")
    try:
        cls = _CLASSES[MessageType(d.pop("type", None))]
    except (ValueError, KeyError):
        raise MessageError("unknown message type") from None
    kwargs = {}
    for f in fields(cls):
        if f.name in d:
            kwargs[f.name] = _check(cls, f.name, str(f.type), d.pop(f.name))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise MessageError(f"{cls.TYPE.value}: missing field {f.name!r}")
    if d:
        raise MessageError(f"{cls.TYPE.value}: unknown field(s) {sorted(d)}")
    return cls(**kwargs)


def send(conn, msg: Message) -> None:
    conn.send_bytes(encode(msg))


def recv(conn) -> Message:
    """The next message on ``conn``; EOFError/OSError when the other end went away, MessageError when it is garbage."""
    return decode(conn.recv_bytes(MAX_MESSAGE_BYTES))
