r"""Pluggable pipeline sources: where a local pipeline's inputs come from.

Built in: ``mqtt`` (frames published on a topic) and ``file`` (a replay file of
length-prefixed frames). Others (the SUMO camera) plug in with
:func:`register_source`.

Example:
    >>> import tempfile, pathlib
    >>> from edge_agent.protocol import SourceSpec, Tensor, encode_frame
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.bin"
    >>> write_replay(path, [encode_frame({}, [Tensor("x", "uint8", (1,), b"\x07")])])
    >>> src = make_source(SourceSpec(kind="file", path=str(path)), SourceContext())
    >>> src.start(); bytes(src.get(1.0).tensors[0].data), src.get(0.1), src.exhausted
    (b'\x07', None, True)
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ._transport import Message, Transport
from .protocol import DEFAULT_MAX_PAYLOAD_BYTES, ProtocolError, SourceSpec, Tensor, decode_frame

__all__ = [
    "FileReplaySource",
    "MqttSource",
    "Sample",
    "Source",
    "SourceContext",
    "SourceFactory",
    "make_source",
    "read_replay",
    "register_source",
    "write_replay",
]

logger = logging.getLogger(__name__)

_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Sample:
    """One input for a pipeline.

    ``ts`` is when it reached this device (latency counts from there);
    ``captured_ts`` when the camera took it (the frame header's ``ts``; None
    when the frame does not say), which splits frames between routes.
    ``ack`` releases it at its source (the broker forgets a frame only then);
    the pipeline calls :meth:`done` once it has no more to do with it.
    """

    tensors: tuple[Tensor, ...]
    ts: float
    captured_ts: float | None = None
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def done(self) -> None:
        """The pipeline is done with it (its event is out, or it went elsewhere)."""
        if self.ack is not None:
            self.ack()

    @property
    def split_ts(self) -> float:
        """The time a route's ``since_ts`` is compared with."""
        return self.ts if self.captured_ts is None else self.captured_ts


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What sources may use from the agent."""

    transport: Transport | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    name: str = "source"


class Source(Protocol):
    """A stream of samples; ``get`` must return within ``timeout_s``."""

    def start(self) -> None:
        """Begin producing (subscribe, open files)."""
        ...

    def get(self, timeout_s: float) -> Sample | None:
        """The next sample, or None if none came within ``timeout_s``."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when no sample will ever come again (a replay file ended)."""
        ...

    def stop(self) -> None:
        """Release resources."""
        ...


SourceFactory = Callable[[SourceSpec, SourceContext], Source]
_FACTORIES: dict[str, SourceFactory] = {}


def register_source(kind: str, factory: SourceFactory) -> None:
    """Make ``SourceSpec(kind=kind)`` build sources with ``factory``."""
    _FACTORIES[kind] = factory


def make_source(spec: SourceSpec, ctx: SourceContext) -> Source:
    """Build a source for ``spec``.

    Raises:
        ValueError: unknown kind, or the spec lacks what the kind needs.
    """
    factory = _FACTORIES.get(spec.kind)
    if factory is None:
        raise ValueError(f"unknown source kind {spec.kind!r}; known: {sorted(_FACTORIES)}")
    return factory(spec, ctx)


# ------------------------------------------------------------------ replay files


def write_replay(path: Path, frames: Iterable[bytes]) -> None:
    """Write frames as a replay file (uint32 little-endian length + frame, repeated)."""
    with path.open("wb") as f:
        for frame in frames:
            f.write(_LEN.pack(len(frame)))
            f.write(frame)


def read_replay(path: Path, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Iterator[bytes]:
    """Frames of a replay file, in order.

    Raises:
        ValueError: a record is truncated or over ``max_bytes``.
    """
    with path.open("rb") as f:
        while head := f.read(4):
            if len(head) < 4:
                raise ValueError(f"{path}: truncated record header")
            (n,) = _LEN.unpack(head)
            if n > max_bytes:
                raise ValueError(f"{path}: record of {n} bytes is over {max_bytes}")
            frame = f.read(n)
            if len(frame) < n:
                raise ValueError(f"{path}: truncated record")
            yield frame


class FileReplaySource:
    """Replays a file of frames, at ``rate_hz`` (or as fast as asked), looping if asked."""

    def __init__(self, spec: SourceSpec, ctx: SourceContext) -> None:
        """Check the spec; the file is opened by :meth:`start`."""
        if not spec.path:
            raise ValueError("source kind 'file' needs 'path'")
        path = Path(spec.path)
        self._path = path if path.is_absolute() else ctx.base_dir / path
        self._period = 1.0 / spec.rate_hz if spec.rate_hz else 0.0
        self._loop = spec.loop
        self._max = ctx.max_payload_bytes
        self._frames: Iterator[bytes] | None = None
        self._next_at = 0.0
        self._done = False
        self._stop = threading.Event()

    def start(self) -> None:
        """Open the file."""
        if not self._path.exists():
            raise ValueError(f"replay file {self._path} does not exist")
        self._frames = read_replay(self._path, self._max)
        self._next_at = time.monotonic()

    @property
    def exhausted(self) -> bool:
        """True after the last frame of a non-looping replay."""
        return self._done

    def get(self, timeout_s: float) -> Sample | None:
        """The next frame, paced to ``rate_hz``."""
        if self._done or self._frames is None:
            return None
        wait = self._next_at - time.monotonic()
        if wait > timeout_s:
            self._stop.wait(timeout_s)
            return None
        if wait > 0 and self._stop.wait(wait):
            return None
        self._next_at = max(self._next_at + self._period, time.monotonic() - 1.0)
        while True:
            frame = next(self._frames, None)
            if frame is not None:
                break
            if not self._loop:
                self._done = True
                return None
            self._frames = read_replay(self._path, self._max)
        try:
            _, tensors = decode_frame(frame, max_bytes=self._max)
        except ProtocolError as exc:
            logger.warning("replay %s: skipping a bad frame: %s", self._path, exc)
            return None
        return Sample(tuple(tensors), time.time())

    def stop(self) -> None:
        """Stop pacing waits."""
        self._stop.set()


class MqttSource:
    """Frames published on an MQTT topic; keeps the newest ``options.buffer`` (default 64).

    At least once across a crash: up to ``options.unacked`` (default 8) frames
    in hand are acknowledged to the broker only when the pipeline is done with
    them, so the frames a killed agent had taken but not yet answered come
    again when it reconnects (its session is persistent). Frames beyond that
    backlog are acknowledged on arrival: a broker sends a client only so many
    unacknowledged messages (Mosquitto: 20), and the agent's commands must not
    wait behind its camera.
    """

    def __init__(self, spec: SourceSpec, ctx: SourceContext) -> None:
        """Check the spec; subscribes in :meth:`start`."""
        if not spec.topic:
            raise ValueError("source kind 'mqtt' needs 'topic'")
        if ctx.transport is None:
            raise ValueError("source kind 'mqtt' needs the agent's MQTT transport")
        self._topic = spec.topic
        self._transport = ctx.transport
        self._max = ctx.max_payload_bytes
        self._name = ctx.name
        self._buf: collections.deque[Sample] = collections.deque(
            maxlen=int(spec.options.get("buffer", 64))
        )
        self._cv = threading.Condition()
        self._max_unacked = int(spec.options.get("unacked", 8))
        self._unacked = 0
        self.dropped = 0

    def start(self) -> None:
        """Subscribe to the topic."""
        self._transport.subscribe(self._topic, self._on_message, qos=1, deferred_ack=True)

    @property
    def exhausted(self) -> bool:
        """Never: more may come."""
        return False

    def _on_message(self, msg: Message) -> None:
        arrived = time.time()
        try:
            header, tensors = decode_frame(msg.payload, max_bytes=self._max)
        except ProtocolError as exc:
            logger.warning("pipeline %s: bad frame on %s: %s", self._name, msg.topic, exc)
            if msg.ack is not None:
                msg.ack()
            return
        captured = header.get("ts")
        if type(captured) not in (int, float):
            captured = None
        dropped: Sample | None = None
        with self._cv:
            ack = msg.ack
            if ack is not None:
                if self._unacked < self._max_unacked:
                    self._unacked += 1
                    ack = self._releaser(ack)
                else:
                    ack()
                    ack = None
            if len(self._buf) == self._buf.maxlen:
                self.dropped += 1
                dropped = self._buf.popleft()
            self._buf.append(Sample(tuple(tensors), arrived, captured, ack))
            self._cv.notify()
        if dropped is not None:
            dropped.done()

    def _releaser(self, ack: Callable[[], None]) -> Callable[[], None]:
        """``ack``, and one frame fewer in hand (once, from any thread)."""
        sent = threading.Event()

        def release() -> None:
            if sent.is_set():
                return
            sent.set()
            with self._cv:
                self._unacked -= 1
            ack()

        return release

    def get(self, timeout_s: float) -> Sample | None:
        """The oldest buffered frame."""
        with self._cv:
            if not self._buf:
                self._cv.wait(timeout_s)
            return self._buf.popleft() if self._buf else None

    def stop(self) -> None:
        """Unsubscribe; the frames still buffered are released (they go unrun)."""
        self._transport.unsubscribe(self._topic)
        with self._cv:
            left = list(self._buf)
            self._buf.clear()
        for sample in left:
            sample.done()


register_source("file", FileReplaySource)
register_source("mqtt", MqttSource)
