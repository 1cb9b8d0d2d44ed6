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
  drops the connection, so the next call asks the sentinels again;
- mode cluster (`ClusterClient`): one such client per primary, the call routed by its first key's
  slot (CRC16 of the hash tag) through the slot map (`CLUSTER SLOTS`), `MOVED` followed (and the
  map re-read), `ASK` answered with `ASKING`, the map re-read after a failed call (a dead primary,
  a failover), at most every `REFRESH_EVERY`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.crc import key_slot

# A connection with calls timing out and no byte received for this long is dropped and reopened.
STALLED_AFTER = 1.0
# Cluster: the slot map is re-read at most this often after failures (a failover takes seconds).
REFRESH_EVERY = 0.1
SLOTS = 16384
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
        futures = [self.loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        return futures

    def send_one(self, packed: bytes) -> asyncio.Future[Reply]:
        """Write one packed command; the future of its reply."""
        future = self.loop.create_future()
        self.waiting.append(future)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        return future

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
        reply = await self.execute(args)
        if isinstance(reply, hiredis.ReplyError):
            raise RespError(str(reply))
        return reply

    async def execute(self, command: tuple[Any, ...], deadline: float | None = None,
                      route_key: str | None = None) -> Reply:
        """One command (the hot path: `pipeline` with one command, without the lists)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connected(deadline)
        future = connection.send_one(hiredis.pack_command(command))
        self._arm(loop, deadline, future, connection)
        reply = await future
        if reply.__class__ is hiredis.ReplyError and str(reply).startswith("READONLY"):
            connection.abort()  # a demoted primary: ask the sentinels again on the next call
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]], deadline: float | None = None,
                       route_key: str | None = None) -> list[Reply]:
        """Several commands written together on one connection; their replies in order. A Redis
        error reply is returned in its place as a `hiredis.ReplyError` (the caller decides).
        `route_key` is for the cluster client's sake (one interface); one Redis ignores it."""
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
            if not self.sentinels:
                return await self._open(self.endpoint)
            return await self._connect_to_primary()

    async def _connect_to_primary(self) -> _Connection:
        """Each sentinel in turn names the primary; the first named server that is one (ROLE) wins.
        (During a failover the sentinels disagree for a moment: one may still name the dead primary.)"""
        problems = []
        for index, (host, port) in enumerate(list(self.sentinels)):
            try:
                address = await self._ask_sentinel(host, port)
                endpoint = Endpoint(address[0], address[1], None, self.endpoint.ssl, self.endpoint.username,
                                    self.endpoint.password, self.endpoint.db)
                connection = await self._open(endpoint)
                (role,) = await self._handshake(connection, [("ROLE",)])
                if not role or role[0] != b"master":
                    connection.abort()
                    raise ConnectionFailed(f"{address[0]}:{address[1]} is not a primary")
            except (OSError, ssl.SSLError, RespError) as exc:
                problems.append(f"sentinel {host}:{port}: {exc}")
                continue
            if index:  # ask the one that knew first next time
                self.sentinels.insert(0, self.sentinels.pop(index))
            return connection
        raise ConnectionFailed("no primary: " + "; ".join(problems))

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

    async def _ask_sentinel(self, host: str, port: int) -> tuple[str, int]:
        """The primary's address as one sentinel knows it."""
        template = self.sentinel_endpoint
        connection = await self._open(Endpoint(host, port, None, template.ssl, template.username, template.password))
        try:
            (answer,) = await self._handshake(connection, [("SENTINEL", "get-master-addr-by-name", self.service_name)])
        finally:
            connection.abort()
        if not answer:
            raise ConnectionFailed(f"does not know {self.service_name!r}")
        return answer[0].decode(), int(answer[1])

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.abort(ConnectionFailed("closed"))
            self._connection = None


class ClusterClient:
    """Redis Cluster: each call goes to the primary serving its route key's slot, over that primary's RespClient."""

    def __init__(self, seeds: Sequence[tuple[str, int]], template: Endpoint, timeout: float) -> None:
        self.seeds = list(seeds)
        self.template = template  # TLS and credentials for every node
        self.timeout = timeout
        self.nodes: dict[tuple[str, int], RespClient] = {}
        self.slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._loaded = False
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")

    def _node(self, address: tuple[str, int]) -> RespClient:
        node = self.nodes.get(address)
        if node is None:
            t = self.template
            node = self.nodes[address] = RespClient(
                Endpoint(address[0], address[1], None, t.ssl, t.username, t.password), self.timeout)
        return node

    async def call(self, *args: Any) -> Reply:
        """One keyless command (PING) on every primary at once: the first reply when all answered."""
        if not self._loaded:
            await self._refresh_now(asyncio.get_running_loop().time() + self.timeout)
        primaries = dict.fromkeys(a for a in self.slots if a is not None)
        try:
            replies = await asyncio.gather(*(self._node(address).call(*args) for address in primaries))
        except (RespError, TimeoutError, OSError):
            self._refresh_soon()
            raise
        if not replies:
            raise ConnectionFailed("no primary known")
        return replies[0]

    async def execute(self, command: tuple[Any, ...], deadline: float | None = None,
                      route_key: str | None = None) -> Reply:
        return (await self.pipeline([command], deadline, route_key))[0]

    async def pipeline(self, commands: Sequence[Sequence[Any]], deadline: float | None = None,
                       route_key: str | None = None) -> list[Reply]:
        """The commands on the primary of `route_key`'s slot (every key of a call shares it: hash tags)."""
        assert route_key is not None
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        if not self._loaded:
            await self._refresh_now(deadline)
        address = self.slots[key_slot(route_key.encode())]
        asking = False
        for _ in range(3):  # MOVED / ASK redirections
            if address is None:
                self._refresh_soon()
                raise ConnectionFailed("no primary serves the slot")
            sent = [("ASKING",), *commands] if asking else commands
            try:
                replies = await self._node(address).pipeline(sent, deadline)
            except (RespError, TimeoutError, OSError):
                self._refresh_soon()  # a dead or unreachable primary: a failover may have moved its slots
                raise
            if asking:
                replies = replies[1:]
            first = replies[0]
            if not isinstance(first, hiredis.ReplyError):
                return replies
            kind, _, rest = str(first).partition(" ")
            if kind not in ("MOVED", "ASK"):
                return replies
            slot, _, where = rest.partition(" ")
            host, _, port = where.rpartition(":")
            address = (host or address[0], int(port))
            asking = kind == "ASK"
            if not asking:
                self.slots[int(slot)] = address
                self._refresh_soon()
        raise RespError("too many cluster redirections")

    async def _refresh_now(self, deadline: float) -> None:
        self._refresh_soon(force=True)
        if self._refreshing is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            await asyncio.wait_for(asyncio.shield(self._refreshing), max(remaining, 0))
        if not self._loaded:
            raise ConnectionFailed("no cluster node answered CLUSTER SLOTS")

    def _refresh_soon(self, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshing is None and (force or loop.time() - self._refreshed_at > REFRESH_EVERY):
            self._refreshing = loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        """The slot map from the first node that gives it: the known primaries, then the seeds."""
        try:
            known = [a for a in dict.fromkeys(self.slots) if a is not None]
            for address in dict.fromkeys([*known, *self.seeds]):
                try:
                    ranges = await self._node(address).call("CLUSTER", "SLOTS")
                except (RespError, TimeoutError, OSError):
                    continue
                slots: list[tuple[str, int] | None] = [None] * SLOTS
                for start, end, primary, *_ in ranges:
                    owner = (primary[0].decode() or address[0], int(primary[1]))
                    slots[start:end + 1] = [owner] * (end + 1 - start)
                self.slots = slots
                self._loaded = True
                return
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()
            self._refreshing = None

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self.nodes.values():
            await node.close()
