r"""Link emulation in user space: a TCP proxy that adds delay, jitter and a bandwidth cap.

The kernel here has no netem, so tests, benchmarks and scenarios put this proxy
in front of a broker or an HTTP endpoint to give tiers realistic distances.
It is plain TCP, so MQTT and HTTP both work through it. It listens on loopback
only and forwards to one upstream ``host:port``::

    client ──► 127.0.0.1:listen ──[up: delay, jitter, rate]──► upstream
           ◄──────────────────────[down: delay, jitter, rate]──┘

Each direction has its own :class:`LinkShape`, changed at run time with
:meth:`LinkEmulator.set`. The model, per direction and connection:

- **rate**: a token bucket (``rate_kbps``, burst ``burst_bytes``); a chunk
  leaves when the bucket holds its size, so a stream is paced at the rate;
- **delay + jitter**: each chunk then takes ``delay_ms`` plus a uniform draw
  in ``[-jitter_ms, +jitter_ms]`` (never below 0) to arrive;
- **order**: bytes are never reordered (TCP): a chunk never arrives before
  the one sent ahead of it, so jitter stretches gaps rather than swapping.

``delay_ms`` is one way: the same shape on both directions adds ``2 * delay_ms``
to a round trip. Both sockets of every connection set ``TCP_NODELAY`` (Nagle
plus delayed ACKs turn a 1 ms MQTT round trip into ~90 ms here).

Example::

    with LinkEmulator(("127.0.0.1", 1883), up=LinkShape(delay_ms=10, rate_kbps=2000)) as link:
        client.connect(*link.address)        # the broker, 10 ms and 2 Mbit/s away
        link.set(delay_ms=40)                # the fog link degrades, live

CLI::

    python -m mesh.scenario._linkem --listen 127.0.0.1:18830 \
        --upstream 127.0.0.1:1883 --delay-ms 20 \
        --jitter-ms 5 --rate-kbps 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import random
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal

__all__ = ["Direction", "LinkEmulator", "LinkShape", "main"]

logger = logging.getLogger(__name__)

Direction = Literal["up", "down", "both"]
"""``up``: client to upstream; ``down``: upstream to client."""

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256  # per direction and connection: back-pressure beyond this


@dataclass(frozen=True, slots=True)
class LinkShape:
    """How one direction of the link behaves.

    Attributes:
        delay_ms: one-way delay added to every chunk.
        jitter_ms: each chunk's delay varies uniformly by up to this much.
        rate_kbps: bandwidth cap in kbit/s (1 kbit = 1,000 bits); None for none.
        burst_bytes: token-bucket depth: how much may go at once at full speed.

    Example:
        >>> LinkShape(delay_ms=20, jitter_ms=5, rate_kbps=1000).delay_ms
        20
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbps: float | None = None
    burst_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"delay_ms and jitter_ms must be >= 0, got {self}")
        if self.rate_kbps is not None and self.rate_kbps <= 0:
            raise ValueError(f"rate_kbps must be > 0 or None, got {self.rate_kbps!r}")
        if self.burst_bytes < 1:
            raise ValueError(f"burst_bytes must be >= 1, got {self.burst_bytes!r}")


class _Pacer:
    """Release and arrival times of the chunks of one direction of one connection."""

    __slots__ = ("_last_arrival", "_last_refill", "_rng", "_tokens")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._tokens: float | None = None
        self._last_refill = 0.0
        self._last_arrival = 0.0

    def arrival(self, now: float, size: int, shape: LinkShape) -> float:
        """When a chunk of ``size`` bytes handed over at ``now`` reaches the other end."""
        release = now
        if shape.rate_kbps is not None:
            rate = shape.rate_kbps * 1000.0 / 8.0  # bytes per second
            if self._tokens is None:
                self._tokens = float(shape.burst_bytes)
            else:
                elapsed = max(now - self._last_refill, 0.0)
                self._tokens = min(float(shape.burst_bytes), self._tokens + elapsed * rate)
            self._last_refill = now
            self._tokens -= size
            if self._tokens < 0:
                # In debt: the chunk leaves once the bucket has refilled to zero.
                release = now + (-self._tokens) / rate
        else:
            self._tokens = None
        delay = shape.delay_ms
        if shape.jitter_ms:
            delay += self._rng.uniform(-shape.jitter_ms, shape.jitter_ms)
        arrive = release + max(delay, 0.0) / 1000.0
        # TCP never reorders: an earlier chunk's arrival is a floor.
        arrive = max(arrive, self._last_arrival)
        self._last_arrival = arrive
        return arrive


class LinkEmulator:
    """A delaying, rate-limiting TCP proxy on 127.0.0.1, run on its own thread.

    Args:
        upstream: ``(host, port)`` to forward to.
        listen_port: port to listen on (0 picks a free one; see :attr:`address`).
        up: shape of the client-to-upstream direction.
        down: shape of the upstream-to-client direction (default: same as ``up``).
        seed: seed for the jitter draws (reproducible runs).

    Example:
        >>> link = LinkEmulator(("127.0.0.1", 8000), up=LinkShape(delay_ms=5))
        >>> host, port = link.start().address  # doctest: +SKIP
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen_port: int = 0,
        up: LinkShape | None = None,
        down: LinkShape | None = None,
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream
        self._listen_port = listen_port
        self._shapes: dict[str, LinkShape] = {
            "up": up if up is not None else LinkShape(),
            "down": down if down is not None else (up if up is not None else LinkShape()),
        }
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0
        self.connections_total = 0

    # ------------------------------------------------------------------ control

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``("127.0.0.1", port)``."""
        if not self._port:
            raise RuntimeError("the link emulator is not started")
        return ("127.0.0.1", self._port)

    def shape(self, direction: Literal["up", "down"]) -> LinkShape:
        """The current shape of one direction."""
        return self._shapes[direction]

    def set(
        self,
        *,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        rate_kbps: float | None = None,
        unlimited: bool = False,
        direction: Direction = "both",
    ) -> None:
        """Change the link while it runs; the next chunk read sees the new shape.

        Args:
            delay_ms: new one-way delay (None: unchanged).
            jitter_ms: new jitter (None: unchanged).
            rate_kbps: new bandwidth cap (None: unchanged).
            unlimited: remove the bandwidth cap.
            direction: ``"up"``, ``"down"`` or ``"both"``.

        Example:
            >>> link.set(delay_ms=40, direction="up")  # doctest: +SKIP
        """
        for name in ("up", "down") if direction == "both" else (direction,):
            shape = self._shapes[name]
            changes: dict[str, float | None] = {}
            if delay_ms is not None:
                changes["delay_ms"] = delay_ms
            if jitter_ms is not None:
                changes["jitter_ms"] = jitter_ms
            if rate_kbps is not None:
                changes["rate_kbps"] = rate_kbps
            if unlimited:
                changes["rate_kbps"] = None
            # One reference swap: readers on the proxy thread see old or new, whole.
            self._shapes[name] = replace(shape, **changes)  # type: ignore[arg-type]
        logger.info(
            "link :%d -> %s:%d now up=%s down=%s",
            self._port,
            *self.upstream,
            self._shapes["up"],
            self._shapes["down"],
        )

    def start(self) -> LinkEmulator:
        """Start listening (returns once the port is bound)."""
        if self._thread is not None:
            raise RuntimeError("the link emulator is already started")
        self._thread = threading.Thread(target=self._run, name="linkem", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self._error is not None:
            raise self._error
        if not self._port:
            raise RuntimeError("the link emulator did not start within 10 s")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening and close every connection; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(RuntimeError):  # loop closed between check and call
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._loop = None
        self._thread = None

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the proxy thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
            loop.run_forever()
        except BaseException as exc:  # handed to start(), which raises it
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, host="127.0.0.1", port=self._listen_port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("link emulator 127.0.0.1:%d -> %s:%d", self._port, *self.upstream)
        self._ready.set()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            _nodelay(client_w)
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                logger.warning("link emulator: upstream %s:%d refused: %s", *self.upstream, exc)
                return
            _nodelay(upstream_w)
            pipes = {
                asyncio.ensure_future(self._pipe(client_r, upstream_w, "up")),
                asyncio.ensure_future(self._pipe(upstream_r, client_w, "down")),
            }
            # Both directions run to their EOF (half-close); a failure on one
            # (a reset) tears the connection down.
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Read, stamp each chunk with its arrival time, deliver it then; half-close at EOF."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        pacer = _Pacer(self._rng)
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if sender.done():  # the far side is gone: surface its error
                    break
                now = loop.time()
                if not data:
                    await queue.put((max(now, pacer.arrival(now, 0, self._shapes[direction])), b""))
                    break
                await queue.put((pacer.arrival(now, len(data), self._shapes[direction]), data))
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ------------------------------------------------------------------ CLI


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a link emulator until interrupted (``python -m mesh.scenario._linkem --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh.scenario._linkem",
        description="TCP proxy adding delay, jitter and a bandwidth cap (both directions).",
    )
    parser.add_argument("--listen", type=_host_port, required=True, help="127.0.0.1:PORT")
    parser.add_argument("--upstream", type=_host_port, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each way")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +/- jitter")
    parser.add_argument("--rate-kbps", type=float, default=None, help="bandwidth cap, kbit/s")
    parser.add_argument("--seed", type=int, default=None, help="jitter seed")
    args = parser.parse_args(argv)
    host, port = args.listen
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        parser.error(f"--listen must be a loopback address (127.0.0.1), got {host!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    shape = LinkShape(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, rate_kbps=args.rate_kbps)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LinkEmulator(args.upstream, listen_port=port, up=shape, seed=args.seed) as link:
        (lhost, lport), (uhost, uport) = link.address, args.upstream
        print(f"listening on {lhost}:{lport} -> {uhost}:{uport}", flush=True)
        while not stop.is_set():
            stop.wait(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
