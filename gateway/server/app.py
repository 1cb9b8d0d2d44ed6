"""Build and run the listeners; reload the configuration on SIGHUP without dropping the running one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.audit import flush_output as flush_audit_output
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.consistency import config_warnings
from gateway.config.model import RedisSettings, State
from gateway.errors import Reason, Rejection, error_response
from gateway.jose.precheck import IMPLEMENTATION as PRECHECK_IMPLEMENTATION
from gateway.logs import set_level
from gateway.metrics import exposition, metrics
from gateway.runtime import Runtime
from gateway.server.http1 import Listener
from gateway.server.tls import load_certificate, not_after, server_context
from gateway.server.token import RUNTIME, TokenHandler, runtime_of

log = logging.getLogger("bearer_gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class Guard:
    """Stage connection, beyond what the HTTP parser enforces: total header bytes and concurrent requests."""

    def __init__(self) -> None:
        self.active = 0
        self.cancelled = 0  # requests whose handler was cancelled (caller gone, or shutdown)

    def middleware(self) -> Any:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.handle(request, handler)

        return guard

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        runtime = runtime_of(request)
        limits = runtime.config.limits
        size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > limits.max_header_bytes:
            response = error_response(Rejection(Reason.HEADERS_TOO_LARGE, "connection"), runtime.config.profile.errors)
            response.force_close()
            return response
        if self.active >= limits.max_concurrent_requests:
            return error_response(
                Rejection(Reason.OVERLOADED, "connection", retry_after=1.0), runtime.config.profile.errors
            )
        self.active += 1
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


async def jwks(request: web.Request) -> web.Response:
    """The gateway's public signing keys, for the AS to trust re-issued assertions."""
    runtime = runtime_of(request)
    max_age = int(runtime.config.gateway.jwks_max_age)
    return web.Response(
        body=runtime.jwks_document,
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


def build_main_app(runtime: Runtime, guard: Guard | None = None) -> web.Application:
    guard = guard if guard is not None else Guard()
    app = web.Application(middlewares=[guard.middleware()], client_max_size=runtime.config.limits.max_body_bytes)
    app[RUNTIME] = runtime
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_route("*", "/{tail:.*}", TokenHandler().__call__)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class UpstreamProbe:
    """The AS reachability seen by /readyz, probed at most once per `upstream_probe_interval`
    (one probe in flight at a time) rather than once per readiness probe of every kubelet."""

    def __init__(self) -> None:
        self.checked_at = -float("inf")
        self.reachable = False
        self.probes = 0
        self._lock = asyncio.Lock()

    async def check(self, runtime: Runtime) -> bool:
        interval = runtime.config.admin.readiness.upstream_probe_interval
        async with self._lock:
            if time.monotonic() - self.checked_at >= interval:
                self.probes += 1
                self.reachable = await runtime.upstream.reachable()
                self.checked_at = time.monotonic()
        return self.reachable


PROBE = web.AppKey("upstream_probe", UpstreamProbe)


async def readyz(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    upstream = await request.app[PROBE].check(runtime)
    required = runtime.config.admin.readiness.require_upstream
    checks = {"config": True, "upstream": upstream, "state": await runtime.state.ping()}
    # By default an unreachable AS does not make the gateway unready (README: Operations, /readyz).
    ready = checks["config"] and checks["state"] and (upstream or not required)
    return web.json_response(
        {"ready": ready, "checks": checks, "upstream_required": required}, status=200 if ready else 503
    )


def metrics_access_denied(request: web.Request, runtime: Runtime) -> web.Response | None:
    """/metrics protection (admin.metrics_token, admin.tls.client_ca_file): None when the request may
    read it; either a valid bearer token or a verified client certificate is enough."""
    admin = runtime.config.admin
    mtls = admin.tls is not None and admin.tls.client_ca_file is not None
    if admin.metrics_token is None and not mtls:
        return None
    if mtls and request.transport is not None and request.transport.get_extra_info("peercert"):
        return None  # CERT_OPTIONAL: a certificate presented was verified against the CA in the handshake
    if admin.metrics_token is not None:
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, b"Bearer " + admin.metrics_token.get().encode()):
            return None
    return web.json_response(
        {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
    )


async def prometheus_metrics(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    denied = metrics_access_denied(request, runtime)
    if denied is not None:
        return denied
    update_scrape_gauges(runtime)
    body = exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def update_scrape_gauges(runtime: Runtime) -> None:
    """Gauges read at scrape time: how full the in-memory replay set is."""
    capacity = getattr(runtime.state, "max_entries", None)
    if capacity:
        m = metrics()
        m.replay_set_entries.set(len(runtime.state))  # type: ignore[arg-type]
        m.replay_set_capacity.set(capacity)


def build_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app[PROBE] = UpstreamProbe()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus_metrics)
    return app


class _MalformedRequestLog(logging.Filter):
    """aiohttp logs every malformed HTTP message with a traceback at ERROR: log volume an attacker
    chooses (found by `make fuzz`). Those become DEBUG lines without the traceback; the 400 answer
    stays the same, and real handler errors still log as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not HTTP_LOG.isEnabledFor(logging.DEBUG):
            return False
        record.exc_info, record.exc_text = None, None
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
        record.msg, record.args = "malformed request from %s: %s", (peer, exc.message)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


HTTP_LOG = logging.getLogger("bearer_gateway.http")
HTTP_LOG.addFilter(_MalformedRequestLog())


def runner_options(config: GatewayConfig) -> dict[str, object]:
    """Stage connection: the limits aiohttp's HTTP parser and protocol enforce."""
    limits = config.limits
    return {
        "max_line_size": limits.max_field_bytes,
        "max_field_size": limits.max_field_bytes,
        "max_headers": limits.max_headers,
        "keepalive_timeout": limits.keepalive_timeout,
        "access_log": None,
        "handler_cancellation": True,
        "logger": HTTP_LOG,
    }


# Redis settings that change how the gateway talks to the same Redis keys, not where the replay set lives.
_REDIS_CLIENT_SETTINGS = {"timeout", "on_error", "password"}


def state_change_problem(old: State, new: State) -> str | None:
    """Why a reload may not change `state` this way, or None: a change that would start a new, empty
    replay set (another backend, another Redis, or a memory set rebuilt) would accept used assertions."""
    if old == new:
        return None
    if old.backend == new.backend == "memory" and old.max_replay_entries == new.max_replay_entries:
        return None  # only the unused redis section changed
    if old.backend == new.backend == "redis":
        keep = set(RedisSettings.model_fields) - _REDIS_CLIENT_SETTINGS
        if old.redis.model_dump(include=keep) == new.redis.model_dump(include=keep):
            return None
        return "the Redis holding the replay set cannot change on reload (used assertions would pass again); restart"
    return "the replay set cannot move or be rebuilt on reload (used assertions would pass again); restart"


class Gateway:
    """The running gateway: its listeners, its runtime, and config reload."""

    def __init__(self, config: GatewayConfig, source: str, *, reuse_port: bool = False) -> None:
        self.source = source
        self.runtime = Runtime(config, source)
        self.reuse_port = reuse_port
        self.guard = Guard()
        self.main_app = build_main_app(self.runtime, self.guard)
        self.admin_app = build_admin_app(self.runtime)
        self._runners: list[web.AppRunner] = []
        self._lean: Listener | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[object]] = set()
        self.main_port = 0
        self.admin_port = 0
        self.main_tls: ssl.SSLContext | None = None
        self.admin_tls: ssl.SSLContext | None = None
        self._record_loaded()

    @staticmethod
    def _record_loaded() -> None:
        """The last configuration load (start or SIGHUP) succeeded, now."""
        m = metrics()
        m.config_last_reload_successful.set(1)
        m.config_last_reload_success.set_to_current_time()

    def _reload_certificates(self, config: GatewayConfig) -> None:
        """The listeners' certificates re-read into the running contexts: new handshakes get them."""
        if self.main_tls is not None and config.listen.tls is not None:
            load_certificate(self.main_tls, config.listen.tls, self.source, "listen.tls")
        if self.admin_tls is not None and config.admin.tls is not None:
            load_certificate(self.admin_tls, config.admin.tls, self.source, "admin.tls")

    def record_certificates(self, config: GatewayConfig) -> None:
        """bearer_gateway_certificate_expiry_timestamp_seconds for every certificate the gateway presents."""
        certificates = {"listen": config.listen.tls, "admin": config.admin.tls}
        files = {name: tls.cert_file for name, tls in certificates.items() if tls is not None}
        for client in config.clients:
            auth = client.upstream.client_auth
            if auth.method == "tls_client_auth" and auth.cert_file is not None:
                files[f"client_auth:{client.client_id}"] = auth.cert_file
        gauge = metrics().certificate_expiry
        for name, path in files.items():
            expiry = not_after(path)
            if expiry is not None:
                gauge.labels(name).set(expiry)

    async def start(self, *, admin: bool = True) -> None:
        config = self.runtime.config
        await self.runtime.start()
        if config.listen.tls:
            self.main_tls = server_context(config.listen.tls, self.source, "listen.tls")
        if admin and config.admin.tls:
            # Probes come without a client certificate: the admin listener asks for one, /metrics needs it.
            self.admin_tls = server_context(config.admin.tls, self.source, "admin.tls", client_cert_optional=True)
        self.record_certificates(config)
        tls = self.main_tls
        if config.listen.engine == "lean":
            self._lean = Listener(lambda: self.runtime, self.guard, tls=tls)
            self.main_port = await self._bind(
                self._lean.start(config.listen.host, config.listen.port, reuse_port=self.reuse_port),
                "listen",
                config.listen.host,
                config.listen.port,
            )
        else:
            main = web.AppRunner(self.main_app, **runner_options(config))  # type: ignore[arg-type]
            await main.setup()
            self._runners.append(main)
            site = web.TCPSite(
                main,
                config.listen.host,
                config.listen.port,
                ssl_context=tls,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
            await self._bind(site.start(), "listen", config.listen.host, config.listen.port)
            self.main_port = main.addresses[0][1]
        if admin:
            runner = web.AppRunner(self.admin_app, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, config.admin.host, config.admin.port, ssl_context=self.admin_tls)
            await self._bind(site.start(), "admin", config.admin.host, config.admin.port)
            self.admin_port = runner.addresses[0][1]

    async def _bind(self, starting: Awaitable[T], section: str, host: str, port: int) -> T:
        """Start listening; a port in use (or a host not on this machine) is a one-line ConfigError."""
        try:
            return await starting
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(self.source, [(f"{section}.port", f"cannot listen on {host}:{port}: {reason}")]) from None

    async def reload(self) -> bool:
        """Re-read the file; a bad file is refused and the running configuration stays.

        Reloads run one at a time: SIGHUPs in a burst are applied in turn, the last file read wins."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        try:
            config = load_config(self.source)
            running = self.runtime.config
            # The admin listener's address and TLS need a restart; its metrics_token and readiness reload.
            bound = {"host", "port", "tls"}
            if (config.listen, config.admin.model_dump(include=bound), config.workers) != (
                running.listen,
                running.admin.model_dump(include=bound),
                running.workers,
            ):
                raise ConfigError(
                    self.source,
                    [("listen", "listen, admin host/port/tls and workers cannot change on reload; restart")],
                )
            # The replay set and rate cells outlive a reload: the running state object is kept, or (a
            # Redis setting such as the timeout changed) a new client to the same Redis keys is made.
            problem = state_change_problem(self.runtime.config.state, config.state)
            if problem is not None:
                raise ConfigError(self.source, [("state", problem)])
            same_state = config.state == self.runtime.config.state or config.state.backend == "memory"
            new = Runtime(config, self.source, state=self.runtime.state if same_state else None)
            # The fail_open fallback's replay set is carried over too.
            new.limiter.adopt_fallback(self.runtime.limiter)
            await new.start()
            try:
                self._reload_certificates(config)
            except ConfigError:
                await new.close(keep_state=same_state)
                raise
        except ConfigError as exc:
            metrics().config_reloads.labels("refused").inc()
            metrics().config_last_reload_successful.set(0)
            log.error(
                "configuration reload refused, keeping the running configuration",
                extra={"config": self.source, "problems": [f"{key}: {message}" for key, message in exc.problems]},
            )
            return False
        old = self.runtime
        self.runtime = new
        self.main_app[RUNTIME] = new
        self.admin_app[RUNTIME] = new
        metrics().config_reloads.labels("ok").inc()
        self._record_loaded()
        self.record_certificates(config)
        set_level(config.logging.level)
        log.info(
            "configuration reloaded",
            extra={"config": self.source, "config_sha256": config_hash(self.source), "clients": len(config.clients)},
        )
        # In-flight requests hold the old runtime; give them the upstream timeout before closing it.
        self.in_background(self._close_later(old, old.config.upstream.timeouts.total + 1, keep_state=same_state))
        return True

    def in_background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` as a task the gateway keeps a reference to (the loop keeps only a weak one)
        until it ends; `stop()` cancels what is still running."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _close_later(old: Runtime, delay: float, *, keep_state: bool) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            await old.close(keep_state=keep_state)  # also when stop() cancels the wait

    async def stop(self) -> int:
        """Close the listeners, letting requests in flight finish; returns how many did (drained)."""
        in_flight, cancelled = self.guard.active, self.guard.cancelled
        if self._lean is not None:
            # In-flight requests may still wait on the AS: give them its timeout to finish.
            await self._lean.drain(self.runtime.config.upstream.timeouts.total + 1)
            self._lean = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        drained = in_flight - (self.guard.cancelled - cancelled)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.runtime.close()
        return drained


async def serve(config: GatewayConfig, source: str, *, reuse_port: bool = False, admin: bool = True) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the configuration."""
    gateway = Gateway(config, source, reuse_port=reuse_port)
    try:
        await gateway.start(admin=admin)
    except BaseException:
        await gateway.stop()
        raise
    for key, message in config_warnings(config):
        log.warning("configuration warning", extra={"config": source, "key": key, "problem": message})
    log.info(
        "started",
        extra={
            "version": __version__,
            "precheck": PRECHECK_IMPLEMENTATION,
            "config": source,
            "config_sha256": config_hash(source),
            "clients": len(config.clients),
            "state_backend": config.state.backend,
            "listen": f"{'https' if config.listen.tls else 'http'}://{config.listen.host}:{gateway.main_port}",
            "admin": f"http://{config.admin.host}:{gateway.admin_port}" if admin else None,
            "pid": os.getpid(),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway.in_background(gateway.reload()))
    try:
        await stop.wait()
        log.info("stopping: draining requests in flight", extra={"in_flight": gateway.guard.active})
    finally:
        drained = await gateway.stop()
        flush_audit_output()  # the last batch of audit lines, before the process ends
    log.info("stopped", extra={"drained_requests": drained})


def config_hash(source: str) -> str:
    """SHA-256 of the configuration file as read (which file version runs), '-' if unreadable."""
    try:
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()
    except OSError:
        return "-"
