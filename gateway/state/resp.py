"""A lean RESP2 client on the event loop, for the state's hot calls (modes single and sentinel).

redis-py's asyncio client costs ~100 µs of CPU per command here (a pool checkout, its command
packing and response callbacks, an `asyncio.timeout` per call, an observability hook); this one
keeps what the state needs and nothing else:

- one persistent connection (an `asyncio.Protocol`), every call pipelined on it: a command is
  written at once and its answer matched in order (Redis answers a connection's commands in the
  order they came); `hiredis.Reader` parses the replies, `hiredis.pack_command` packs commands;
- a deadline per call without a task or a handle per call: the calls share one bound, so their
  deadlines come in order and one timer, set at the oldest pending deadline, expires them;
  an answer that comes after its call timed out is read and dropped;
- a lost connection fails every pending call; the next call reconnects (one connect shared by
  the callers waiting on it, bounded by their own deadlines); a connection that has answered
  nothing for `STALLED_AFTER` while calls time out is dropped and reopened;
- TLS (`rediss://` or `state.redis.tls`), ACL `AUTH` (username and password), `SELECT`;
- mode sentinel: the primary's address is asked of the sentinels on every (re)connect, and the
  connection is checked to be a primary (`ROLE`); a `READONLY` answer (a demoted primary)
  drops the connection, so the next call asks the sentinels again.

Redis Cluster stays on redis-py's RedisCluster (slot map, MOVED/ASK, node discovery).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

# A connection with calls timing out and no byte received for this long is dropped and reopened.
STALLED_AFTER = 1.0
Reply = Any  # what hiredis.Reader gives: int, bytes, list, None, or a hiredis.ReplyError value


class RespError(Exception):
    """Redis answered with an error (the message is Redis'), or the connection failed."""


class ConnectionFailed(RespError, ConnectionError):
    """Not connected: refused, reset, closed, or the handshake failed."""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect and what to say first."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host:port
    ssl: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0


class _Connection(asyncio.Protocol):
    """One Redis connection: commands written in order, replies handed to the waiting futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self.closed = False
        self.received_at = loop.time()
        self.outgoing: list[bytes] = []  # written together at the end of this loop iteration

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.received_at = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.received_at = self.loop.time()
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self.reader.gets()) is not False:
                future = waiting.popleft()
                if not future.done():  # else: it timed out (or its caller went away); dropped
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or an answer nobody asked for
            self.abort(ConnectionFailed(f"protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionFailed("connection lost" if exc is None else f"connection lost: {exc}"))

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes, count: int) -> list[asyncio.Future[Reply]]:
        """Write `count` packed commands; one future per reply."""
        assert self.transport is not None
        futures = [self.loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        return futures

    def _flush(self) -> None:
        """One write (one syscall) for every command sent in this loop iteration."""
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def abort(self, error: Exception | None = None) -> None:
        self.closed = True
        if error is not None:
            self._fail(error)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """Calls to one Redis (single) or to the primary the sentinels name, each bounded by `timeout`."""

    def __init__(
        self,
        endpoint: Endpoint,
        timeout: float,
        *,
        connect_timeout: float | None = None,
        sentinels: Sequence[tuple[str, int]] = (),
        service_name: str = "",
        sentinel_endpoint: Endpoint | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else max(timeout, 0.5)
        self.sentinels = list(sentinels)
        self.service_name = service_name
        self.sentinel_endpoint = sentinel_endpoint or Endpoint()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        # Pending deadlines in the order they were set (nondecreasing: one bound for every call).
        self._timed: collections.deque[tuple[float, asyncio.Future[Reply], _Connection]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_deadline = 0.0

    # -- calls --------------------------------------------------------------------------------

    async def call(self, *args: Any) -> Reply:
        """One command; its reply (a Redis error reply raised as RespError)."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, hiredis.ReplyError):
            raise RespError(str(reply))
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]], deadline: float | None = None) -> list[Reply]:
        """Several commands written together on one connection; their replies in order. A Redis
        error reply is returned in its place as a `hiredis.ReplyError` (the caller decides)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connected(deadline)
        if len(commands) == 1:
            packed = hiredis.pack_command(tuple(commands[0]))
        else:
            packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        futures = connection.send(packed, len(commands))
        for future in futures:
            self._arm(loop, deadline, future, connection)
        replies = []
        error: BaseException | None = None
        for future in futures:  # await every one, so no exception goes unretrieved
            try:
                replies.append(await future)
            except (TimeoutError, RespError) as exc:
                error = error or exc
        if error is not None:
            raise error
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):
                connection.abort()  # a demoted primary: ask the sentinels again on the next call
        return replies

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float, future: asyncio.Future[Reply],
             connection: _Connection) -> None:
        if deadline < self._last_deadline:  # a retry inside an older call's bound: its own timer
            handle = loop.call_at(deadline, self._expire_one, future, connection)
            future.add_done_callback(lambda _: handle.cancel())
            return
        self._last_deadline = deadline
        self._timed.append((deadline, future, connection))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        timed = self._timed
        now = asyncio.get_running_loop().time()
        while timed:
            deadline, future, connection = timed[0]
            if not future.done():
                if deadline > now:
                    self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
                    return
                self._expire_one(future, connection)
            timed.popleft()

    def _expire_one(self, future: asyncio.Future[Reply], connection: _Connection) -> None:
        if future.done():
            return
        future.set_exception(TimeoutError())
        loop = asyncio.get_running_loop()
        if not connection.closed and loop.time() - connection.received_at > max(STALLED_AFTER, 4 * self.timeout):
            connection.abort(ConnectionFailed("no answer"))  # stalled (a hung server, a lost path)

    # -- connecting -----------------------------------------------------------------------------

    async def _connected(self, deadline: float) -> _Connection:
        """The open connection; one connect shared by every caller that waits for it."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connected_done)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(self._connecting), max(remaining, 0))
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"connect: {exc}") from None

    def _connected_done(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self.connect_timeout):
            endpoint = self.endpoint
            if self.sentinels:
                host, port = await self._ask_sentinels()
                endpoint = Endpoint(host, port, None, endpoint.ssl, endpoint.username, endpoint.password,
                                    endpoint.db)
            connection = await self._open(endpoint)
            if self.sentinels:
                role = await self._handshake(connection, [("ROLE",)])
                if not role[0] or role[0][0] != b"master":
                    connection.abort()
                    raise ConnectionFailed(f"{endpoint.host}:{endpoint.port} is not a primary")
            return connection

    async def _open(self, endpoint: Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop)
        if endpoint.path is not None:
            await loop.create_unix_connection(lambda: connection, endpoint.path, ssl=endpoint.ssl)
        else:
            await loop.create_connection(
                lambda: connection, endpoint.host, endpoint.port, ssl=endpoint.ssl,
                server_hostname=endpoint.host if endpoint.ssl is not None else None,
            )
        try:
            hello: list[tuple[Any, ...]] = []
            if endpoint.password is not None:
                hello.append(("AUTH", endpoint.username, endpoint.password) if endpoint.username
                             else ("AUTH", endpoint.password))
            if endpoint.db:
                hello.append(("SELECT", endpoint.db))
            if hello:
                await self._handshake(connection, hello)
        except BaseException:
            connection.abort()
            raise
        return connection

    @staticmethod
    async def _handshake(connection: _Connection, commands: list[tuple[Any, ...]]) -> list[Reply]:
        futures = connection.send(b"".join(hiredis.pack_command(command) for command in commands), len(commands))
        replies = [await future for future in futures]
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                connection.abort()
                raise ConnectionFailed(str(reply))
        return replies

    async def _ask_sentinels(self) -> tuple[str, int]:
        """The primary's address, from the first sentinel that knows it (the one that answered moves first)."""
        problems = []
        for index, (host, port) in enumerate(self.sentinels):
            sentinel_endpoint = Endpoint(host, port, None, self.sentinel_endpoint.ssl,
                                         self.sentinel_endpoint.username, self.sentinel_endpoint.password)
            try:
                connection = await self._open(sentinel_endpoint)
            except (OSError, ssl.SSLError, RespError) as exc:
                problems.append(f"{host}:{port}: {exc}")
                continue
            try:
                (answer,) = await self._handshake(
                    connection, [("SENTINEL", "get-master-addr-by-name", self.service_name)])
            except RespError as exc:
                problems.append(f"{host}:{port}: {exc}")
                continue
            finally:
                connection.abort()
            if answer:
                if index:
                    self.sentinels.insert(0, self.sentinels.pop(index))
                return answer[0].decode(), int(answer[1])
            problems.append(f"{host}:{port}: does not know {self.service_name!r}")
        raise ConnectionFailed("no sentinel named the primary: " + "; ".join(problems))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.abort(ConnectionFailed("closed"))
            self._connection = None
