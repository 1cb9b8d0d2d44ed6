"""The shield: a flood of forged and expired assertions plus a 10/s trickle of valid CAMARA requests, real Keycloak.

Two bounded runs of the same length, after a common warm-up:
  1. the flood goes to the gateway (closed loop: whatever rate saturates it), the trickle too;
  2. the same flood, paced at the rate run 1 reached, goes straight to Keycloak's token endpoint,
     while the trickle still goes through the gateway.
For each: the trickle's success rate and p50/p99, the CPU seconds Keycloak used, and how many flood
requests reached Keycloak (its stored JWT_AUTHORIZATION_GRANT[_ERROR] events, less the trickle
requests the gateway forwarded). The gateway runs in `resign` mode against the realm in
deploy/keycloak/realm-camara.json, as deploy/keycloak/README.md describes; rate limits are set
generously so that what is measured is the check pipeline, not the limiter.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.assertions import JWT_BEARER_FORM, BenchClient, forged_bodies, new_client, write_bodies
from bench.loadgen import WrkResult, run_wrk
from bench.procs import ROOT, free_port, tree_cpu_seconds
from bench.scenarios import Settings
from bench.servers import GENEROUS, TOKEN_PATH, Bench, Server, gateway_config, start_gateway
from gateway.jose.signing import generate_private_key_pem, mint_assertion

HELPER = ROOT / "tests" / "e2e" / "keycloak_proc.py"
LEGIT_RATE = 10.0  # requests per second
SUBJECT = "tel:+34600000001"  # a subscriber the realm links to the gateway's identity provider
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"


def _expired(client: BenchClient, audience: str, count: int) -> list[str]:
    signer = client.signer
    now = int(time.time())
    return [
        JWT_BEARER_FORM
        + mint_assertion(
            signer, iss=client.client_id, sub=SUBJECT, aud=audience, scope=SCOPE, now=now - 3600, jti=f"expired-{n}"
        )
        for n in range(count)
    ]


def _audit_forwarded(path: Path) -> int:
    """Token requests the gateway sent upstream so far (audit lines with an upstream status)."""
    count = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("upstream_status") is not None:
                count += 1
    return count


def _legit_summary(result: WrkResult, sent_hint: int) -> dict[str, Any]:
    answered = sum(result.statuses.values())
    errors = result.socket_errors
    failed_transport = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    sent = max(answered + failed_transport, 1)
    return {
        "legit_sent": answered + failed_transport,
        "legit_success": result.statuses.get("200", 0) / sent,
        "legit_statuses": result.statuses,
        "legit_p50_ms": result.latency_ms["p50"],
        "legit_p99_ms": result.latency_ms["p99"],
        "legit_max_ms": result.latency_ms["max"],
        "legit_transport_errors": failed_transport,
        "legit_exhausted": result.exhausted,
        "legit_planned": sent_hint,
    }


def shield(bench: Bench, settings: Settings, log: Callable[[str], None], duration: float = 20.0) -> dict[str, Any]:
    if not HELPER.exists():
        return {"status": "not available: tests/e2e/keycloak_proc.py (the Keycloak helper) is not in the tree"}
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.e2e import keycloak_proc as kcp

    why = kcp.tool_status()
    if why:
        return {"status": f"not available: {why}"}
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    audience = gateway_url + TOKEN_PATH
    started = time.monotonic()
    kc = kcp.KeycloakProcess(gateway_issuer=gateway_url)
    gw: Server | str | None = None
    try:
        log("  starting Keycloak (scripts/keycloak.sh; the first install takes minutes)")
        kc.start()
        log(f"  Keycloak ready in {kc.startup_seconds:.0f} s at {kc.base_url}")
        kc_path = urllib.parse.urlsplit(kc.token_url).path
        caller = new_client("camara-caller", "ES256")
        gw_key = bench.workdir / "gw-shield.pem"
        gw_key.write_bytes(generate_private_key_pem("ES256"))
        secret = bench.workdir / "keycloak-client-secret"
        secret.write_text(kcp.SECRET_CLIENT_SECRET + "\n")  # the realm's throwaway test secret
        client = {
            "client_id": caller.client_id,
            "keys": {"jwks": json.loads(json.dumps(caller.jwks()))},
            "rate_limit": GENEROUS,
            "upstream": {
                "mode": "resign",
                "audience": kc.issuer,
                "scope_parameter": True,
                "client_auth": {
                    "method": "client_secret_basic",
                    "client_id": kcp.SECRET_CLIENT_ID,
                    "secret": {"file": str(secret)},
                },
            },
        }
        config = gateway_config(
            bench,
            port=port,
            admin_port=free_port(),
            upstream_url=kc.token_url,
            clients=[client],
            audiences=[audience],
            gateway_section={
                "issuer": gateway_url,
                "keys": [{"kid": "gw-shield-1", "alg": "ES256", "private_key_file": str(gw_key)}],
            },
        )
        # Unpinned: Keycloak needs both cores, and the comparison is between the two runs.
        gw = start_gateway(bench, "gw-shield", config, cpus=None)
        if not isinstance(gw, Server):
            return {"status": f"not available: {gw}"}
        audit = bench.workdir / "gw-shield.audit.jsonl"

        signer = caller.signer

        def legit(count: int, name: str) -> Path:
            bodies = [
                JWT_BEARER_FORM + mint_assertion(signer, iss=caller.client_id, sub=SUBJECT, aud=audience, scope=SCOPE)
                for _ in range(count)
            ]
            return write_bodies(bench.workdir / f"shield-legit-{name}.txt", bodies)

        flood = forged_bodies(caller, 2000, audience=audience) + _expired(caller, audience, 2000)
        flood_file = write_bodies(bench.workdir / "shield-flood.txt", _interleave(flood))

        # Warm-up: Keycloak's JIT and JWKS cache, the gateway's upstream pool; not measured.
        warm = run_wrk(
            gw.url,
            legit(60, "warm"),
            duration=4,
            connections=2,
            expected_status=200,
            once=True,
            workdir=bench.workdir,
            rate=LEGIT_RATE * 2,
        )
        if warm.statuses.get("200", 0) == 0:
            return {
                "status": f"not available: valid requests through the gateway failed: {warm.statuses} "
                f"(gateway log: {gw.proc.tail(3)})"
            }
        run_wrk(
            kc.base_url,
            flood_file,
            duration=3,
            connections=16,
            expected_status=401,
            once=False,
            workdir=bench.workdir,
            path=kc_path,
        )
        runs = []
        flood_rate = None
        for target in ("gateway", "keycloak"):
            kc.clear_events()
            forwarded_before = _audit_forwarded(audit)
            cpu_before = tree_cpu_seconds(kc.proc.pid) if kc.proc else 0.0
            gw_cpu_before = tree_cpu_seconds(gw.proc.pid)
            legit_file = legit(int(duration * LEGIT_RATE * 1.5) + 20, target)
            with ThreadPoolExecutor(2) as pool:
                trickle = pool.submit(
                    run_wrk,
                    gw.url,
                    legit_file,
                    duration=duration,
                    connections=4,
                    expected_status=200,
                    once=True,
                    workdir=bench.workdir,
                    rate=LEGIT_RATE,
                    timeout="10s",
                )
                if target == "gateway":
                    flood_run = pool.submit(
                        run_wrk,
                        gw.url,
                        flood_file,
                        duration=duration,
                        connections=32,
                        expected_status=0,
                        once=False,
                        workdir=bench.workdir,
                    )
                else:
                    flood_run = pool.submit(
                        run_wrk,
                        kc.base_url,
                        flood_file,
                        duration=duration,
                        connections=64,
                        expected_status=0,
                        once=False,
                        workdir=bench.workdir,
                        rate=flood_rate,
                        path=kc_path,
                    )
                legit_result, flood_result = trickle.result(), flood_run.result()
            kc_cpu = (tree_cpu_seconds(kc.proc.pid) if kc.proc else 0.0) - cpu_before
            gw_cpu = tree_cpu_seconds(gw.proc.pid) - gw_cpu_before
            # Audit lines are batched (gateway/audit.py, FLUSH_INTERVAL): let the last batch reach the
            # file before counting, or a forwarded request shows up as a flood request reaching Keycloak.
            time.sleep(0.5)
            forwarded = _audit_forwarded(audit) - forwarded_before
            try:
                events = kc.token_requests_seen()
                reached: int | str = max(events - forwarded, 0)
            except Exception as exc:  # a huge event list: fall back to what was sent
                events = -1
                reached = f"{flood_result.requests} (all sent; events not countable: {exc})"
            if target == "gateway":
                flood_rate = flood_result.rps
            runs.append(
                {
                    "flood_target": "gateway" if target == "gateway" else "Keycloak directly",
                    "flood_requests": flood_result.requests,
                    "flood_rps": flood_result.rps,
                    "flood_statuses": flood_result.statuses,
                    "flood_p99_ms": flood_result.latency_ms["p99"],
                    **_legit_summary(legit_result, int(duration * LEGIT_RATE)),
                    "keycloak_cpu_s": round(kc_cpu, 2),
                    "gateway_cpu_s": round(gw_cpu, 2),
                    "keycloak_grant_events": events,
                    "forwarded_by_gateway": forwarded,
                    "flood_reached_keycloak": reached,
                }
            )
            log(
                f"  flood -> {target}: {flood_result.rps:.0f} req/s {flood_result.statuses}; legit "
                f"{legit_result.statuses} p99 {legit_result.latency_ms['p99']} ms; Keycloak CPU {kc_cpu:.1f} s; "
                f"flood reaching Keycloak {reached}"
            )
        return {
            "status": "ok",
            "duration_s": duration,
            "seconds": round(time.monotonic() - started, 1),
            "keycloak_startup_s": round(kc.startup_seconds or 0, 1),
            "description": (
                f"Each run {duration:.0f} s. Flood: forged-signature and expired assertions for the configured "
                f"client, alternating; sent at the gateway with 32 connections (its saturation rate), then "
                f"straight to Keycloak paced at the rate the first run reached. Trickle: {LEGIT_RATE:.0f} valid "
                "CAMARA requests per second through the gateway (resign mode, client_secret_basic). Keycloak "
                f"{kcp.KEYCLOAK_VERSION}, processes unpinned."
            ),
            "runs": runs,
            "notes": [
                "flood requests reaching Keycloak = its stored jwt-bearer grant events during the run minus the "
                "trickle requests the gateway forwarded (audit lines with an upstream status)",
                "rate limits generous: a per-IP or per-issuer limit would shed the flood earlier still, but on "
                "loopback the flood and the trickle share one address and one client id",
            ],
        }
    except Exception as exc:
        return {"status": f"failed: {exc}".splitlines()[0][:300]}
    finally:
        if isinstance(gw, Server):
            gw.stop()
        kc.stop()


def _interleave(bodies: list[str]) -> list[str]:
    half = len(bodies) // 2
    out: list[str] = []
    for a, b in zip(bodies[:half], bodies[half:], strict=False):
        out += [a, b]
    return out
