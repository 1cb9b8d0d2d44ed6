"""Command line: run, check-config, schema, keygen, assertion."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import TypeAdapter, ValidationError

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.consistency import config_warnings
from gateway.jose.keys import ALGORITHM_NAMES
from gateway.jose.precheck import IMPLEMENTATION as PRECHECK_IMPLEMENTATION
from gateway.logs import configure_logging
from gateway.redact import mask_userinfo


def effective_config(config: GatewayConfig) -> str:
    """The validated config with every default filled in and secrets masked, as YAML."""
    data = config.model_dump(mode="json", by_alias=True)
    return mask_userinfo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.runtime import Runtime

    source = str(args.config)
    try:
        config = load_config(source)
        Runtime(config, source)  # parses every key file too
    except ConfigError as exc:
        problems = exc.problems
        if exc.config is not None:
            # Cross-key rules failed: still parse the key files, for every problem in one run.
            try:
                Runtime(exc.config, source)
            except ConfigError as more:
                seen = {key for key, _ in problems}
                problems = problems + [(key, message) for key, message in more.problems if key not in seen]
        print(ConfigError(source, problems), file=sys.stderr)
        return 1
    for key, message in config_warnings(config):
        print(mask_userinfo(f"{source}: {key}: warning: {message}"), file=sys.stderr)
    print(effective_config(config), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _configure_output(config: GatewayConfig) -> None:
    """Operator logs per `logging`; audit lines batched to stdout (gateway.audit.batch_output)."""
    from gateway.audit import batch_output

    configure_logging(config.logging.format, config.logging.level)
    batch_output(sys.stdout.fileno())


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.server.app import serve

    try:
        config = load_config(args.config)
        if args.workers is not None and args.workers != config.workers:
            # Only the one field is validated (its bounds from the model), then copied in: a dump-and-
            # revalidate round trip fails on secrets, which do not dump as their references.
            field = GatewayConfig.model_fields["workers"]
            try:
                adapter: TypeAdapter[int] = TypeAdapter(Annotated[(field.annotation, *field.metadata)])  # type: ignore[arg-type]
                workers = adapter.validate_python(args.workers)
            except ValidationError as exc:
                raise ConfigError("--workers", [("workers", exc.errors()[0]["msg"])]) from None
            config = config.model_copy(update={"workers": workers})
            from gateway.config.consistency import check_consistency

            problems = check_consistency(config)
            if problems:
                raise ConfigError(str(args.config), problems)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    _configure_output(config)
    if config.workers > 1:
        return _run_workers(args.config, config)
    try:
        import uvloop

        uvloop.run(serve(config, str(args.config)))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _worker(source: str, index: int) -> None:
    from gateway.server.app import serve

    config = load_config(source)
    _configure_output(config)
    import uvloop

    # Every worker binds the same port with SO_REUSEPORT; only the first serves the admin listener.
    uvloop.run(serve(config, source, reuse_port=True, admin=index == 0))


def _run_workers(source: str, config: GatewayConfig) -> int:
    import multiprocessing
    import shutil
    import signal
    import tempfile

    # Workers write their metrics to files in one folder; the admin listener (worker 0) sums them.
    metrics_dir = tempfile.mkdtemp(prefix="bearer-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(str(source), i), daemon=False) for i in range(config.workers)]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None:
                os.kill(process.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    for process in processes:
        process.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((p.exitcode or 0) for p in processes)


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.jose.signing import generate_private_key_pem, load_signing_key

    pem = generate_private_key_pem(args.alg)
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"{out} exists; use --force to overwrite", file=sys.stderr)
        return 1
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode applies to new files only; an overwritten (--force) file keeps its old mode.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    key = load_signing_key(pem, alg=args.alg, kid=args.kid, source=str(out))
    print(json.dumps({"keys": [key.public_jwk()]}, indent=2))
    print(
        f"private key written to {out} (mode 600); add to gateway.keys: "
        f"{{kid: {args.kid}, alg: {args.alg}, private_key_file: {out}}}",
        file=sys.stderr,
    )
    return 0


def cmd_assertion(args: argparse.Namespace) -> int:
    from gateway.jose.keys import KeyLoadError
    from gateway.jose.signing import load_signing_key, mint_assertion

    pem = Path(args.client_key).read_bytes()
    try:
        key = load_signing_key(pem, alg=args.alg, kid=args.kid or args.iss, source=args.client_key)
    except (KeyLoadError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        mint_assertion(key, iss=args.iss, sub=args.sub, aud=args.aud, scope=args.scope or None, lifetime=args.lifetime)
    )
    return 0


def _kid(value: str) -> str:
    from gateway.checks.header_policy import KID_PATTERN

    # The kid the gateway itself would accept in a header (RFC 8725 §3.10).
    if len(value) > 128 or not KID_PATTERN.fullmatch(value) or ".." in value:
        raise argparse.ArgumentTypeError("expected 1-128 characters of A-Z a-z 0-9 . _ : + = -, no '..'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bearer-gateway", description=__doc__)
    version = f"bearer-gateway {__version__} (pre-checks: {PRECHECK_IMPLEMENTATION})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the gateway")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--workers", type=int, default=None, help="processes sharing the port (overrides workers)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate and print the effective config, secrets masked")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check_config)

    schema = sub.add_parser("schema", help="print the JSON Schema of the configuration file (for editors)")
    schema.set_defaults(func=cmd_schema)

    keygen = sub.add_parser("keygen", help="write a gateway signing key and print its public JWKS")
    keygen.add_argument("--alg", choices=ALGORITHM_NAMES, default="ES256")
    keygen.add_argument("--kid", required=True, type=_kid)
    keygen.add_argument("--out", required=True, help="where to write the private key (PEM)")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=cmd_keygen)

    assertion = sub.add_parser("assertion", help="mint a CAMARA JWT-bearer test assertion")
    assertion.add_argument("--client-key", required=True, help="the client's private key (PEM)")
    assertion.add_argument("--iss", required=True, help="the client_id")
    assertion.add_argument("--sub", required=True, help="tel:+<E.164> or operatortoken:<opaque>")
    assertion.add_argument("--aud", required=True, help="the gateway's token URL")
    assertion.add_argument("--scope", default="dpv:FraudPreventionAndDetection sim-swap:check")
    assertion.add_argument("--alg", choices=ALGORITHM_NAMES)
    assertion.add_argument("--kid")
    assertion.add_argument("--lifetime", type=int, default=300)
    assertion.set_defaults(func=cmd_assertion)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
