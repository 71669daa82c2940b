"""``python -m bridge COMMAND``: demo, serve, send, check-config, outbox (CONTRACT section 4)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _settings_file_env(path: str | None) -> dict[str, str]:
    """The environment, with a local.settings.json's ``Values`` underneath it (env wins)."""
    env: dict[str, str] = {}
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"cannot read settings file {path}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        values = data.get("Values", {}) if isinstance(data, dict) else {}
        env.update({str(k): str(v) for k, v in values.items()})
    env.update(os.environ)
    return env


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(itsm=args.itsm)


def _sandbox_itsms() -> tuple[str, ...]:
    # The names only: the sandbox (and its stand-ins) is imported when a command uses it.
    return ("jira", "servicenow")


def _cmd_serve(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .runtime import build_runtime
    from .server import BridgeServer

    stack = None
    if args.sandbox:
        from .sandbox.stack import SandboxStack

        stack = SandboxStack(itsm=args.itsm, itsm_port=args.itsm_port, entra_port=args.entra_port).start()
        env = stack.bridge_env(**_passed_through(os.environ))
    else:
        env = _settings_file_env(args.settings)
    try:
        runtime = build_runtime(env)
        server = BridgeServer(runtime.api, args.host, args.port).start()
    except ConfigError as exc:
        if stack:
            stack.stop()
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if stack:
            stack.stop()
        raise
    # The outbox worker drives what the HTTP answers left queued (202), in this process.
    runtime.worker.start()
    print(f"bridge {__version__} serving {server.url}/api/alerts and {server.url}/api/health", flush=True)
    print(f"  state: {runtime.reconciler.store.name} ({_store_where(runtime)}), outbox worker running", flush=True)
    if stack:
        print(f"  {stack.itsm.display_name} stand-in: {stack.itsm.url} ({stack.itsm.credentials()})", flush=True)
        print(f"  Entra ID stand-in:   {stack.entra.base_url}", flush=True)
        print(
            "  try: python -m bridge send bridge/sandbox/samples/metric_static_fired.testaction.json "
            f"--url {server.url}/api/alerts --sandbox-entra {stack.entra.base_url}",
            flush=True,
        )
    print("Ctrl-C to stop", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    print("stopping", flush=True)
    server.stop()
    runtime.close()
    if stack:
        stack.stop()
    return 0


def _passed_through(environ: Mapping[str, str]) -> dict[str, str]:
    """With --sandbox, the state and timing settings still come from the environment (tests use
    this to run several ``serve`` processes on one state file)."""
    from .config import SETTINGS

    names = {s.name for s in SETTINGS if s.name.startswith(("STATE_", "OUTBOX_", "ITSM_"))} | {"AzureWebJobsStorage"}
    return {name: value for name, value in environ.items() if name in names and value.strip()}


def _store_where(runtime: Any) -> str:
    store = runtime.reconciler.store
    return str(getattr(store, "path", None) or getattr(store, "where", ""))


def _token_for_send(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if args.token_env:
        value = os.environ.get(args.token_env, "")
        if not value:
            raise SystemExit(f"send: environment variable {args.token_env} is empty")
        return value
    if args.sandbox_entra:
        from .sandbox.entra import mint_remote

        return mint_remote(args.sandbox_entra, version=args.token_version)
    if args.tenant and args.client_id and args.scope:
        import msal

        secret = args.client_secret or os.environ.get("BRIDGE_SEND_CLIENT_SECRET", "")
        if not secret:
            raise SystemExit("send: give --client-secret or set BRIDGE_SEND_CLIENT_SECRET")
        app = msal.ConfidentialClientApplication(
            args.client_id,
            authority=f"https://login.microsoftonline.com/{args.tenant}",
            client_credential=secret,
        )
        result = app.acquire_token_for_client(scopes=[args.scope])
        if "access_token" not in result:
            detail = (str(result.get("error_description") or "").splitlines() or [""])[0]
            raise SystemExit(f"send: no token from Entra ID: {result.get('error')}: {detail}")
        return str(result["access_token"])
    raise SystemExit(
        "send: choose a token: --token, --token-env VAR, --sandbox-entra URL, "
        "or --tenant/--client-id/--client-secret/--scope (msal client credentials)"
    )


def _cmd_send(args: argparse.Namespace) -> int:
    import requests

    token = _token_for_send(args)
    worst = 0
    with requests.Session() as http:
        for name in args.files:
            try:
                body = Path(name).read_bytes()
            except OSError as exc:
                print(f"{name}: cannot read: {exc.strerror}")
                worst = 1
                continue
            try:
                response = http.post(
                    args.url,
                    data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    timeout=args.timeout,
                )
            except requests.RequestException as exc:
                print(f"{name}: request failed: {type(exc).__name__}")
                worst = 1
                continue
            print(f"{name}: {response.status_code} {response.text.strip()}")
            if not 200 <= response.status_code < 300:
                worst = 1
    return worst


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .adapters.registry import settings_of
    from .config import SETTINGS
    from .errors import ConfigError
    from .runtime import validate

    env = _settings_file_env(args.settings)
    try:
        settings = validate(env)  # builds what the Function would, without any network call or state file
    except ConfigError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    # The core's settings, then the ones the chosen adapter declares.
    for spec in (*SETTINGS, *settings_of(settings.itsm_adapter)):
        value = env.get(spec.name, "").strip()
        shown = ("(set, hidden)" if spec.secret else value) if value else f"(default: {spec.default or 'none'})"
        print(f"{spec.name:28} {shown}")
    print("settings are valid")
    return 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .runtime import build_runtime
    from .state.base import StateUnavailable

    env = _settings_file_env(args.settings)
    try:
        runtime = build_runtime(env)
    except ConfigError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            return _outbox_list(runtime, show_all=args.all)
        return _outbox_replay(runtime, args.key, replay_all=args.all)
    except StateUnavailable as exc:
        print(f"state store unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.reconciler.store.close()


def _outbox_state(record: Any) -> str:
    if record.dead is not None:
        return "dead"
    if record.held:
        return "held"
    if record.due is not None:
        return "pending"
    return "done"


def _outbox_list(runtime: Any, *, show_all: bool) -> int:
    now = time.time()
    rows = [["key", "state", "attempts", "next attempt", "failing for", "alertId", "why"]]
    counts: dict[str, int] = {}
    for record in sorted(runtime.reconciler.store.records(), key=lambda r: r.updated_at):
        state = _outbox_state(record)
        counts[state] = counts.get(state, 0) + 1
        if state == "done" and not show_all:
            continue
        why = record.dead.reason if record.dead is not None else (record.held or record.last_error or "")
        rows.append([
            record.key,
            state,
            str(record.attempts),
            _ago(record.due - now, future=True) if record.due is not None else "-",
            _ago(now - record.failing_since) if record.failing_since else "-",
            record.alert_id[-60:],
            " ".join(why.split())[:160],
        ])
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "held", "dead", "done"))
    print(f"outbox ({runtime.reconciler.store.name}): {summary}")
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for n, row in enumerate(rows):
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
    return 0


def _ago(seconds: float, *, future: bool = False) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        text = f"{seconds:.0f} s"
    else:
        text = f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
    return ("in " + text) if future else text


def _outbox_replay(runtime: Any, key: str | None, *, replay_all: bool) -> int:
    reconciler = runtime.reconciler
    if replay_all:
        keys = [r.key for r in reconciler.store.records() if _outbox_state(r) != "done"]
    elif key:
        keys = [key.strip().lower()]
    else:
        print("outbox replay: give a KEY or --all", file=sys.stderr)
        return 2
    worst = 0
    for k in keys:
        if reconciler.replay(k) is None:
            print(f"{k}: no such record")
            worst = 1
            continue
        result = reconciler.run(k)
        record = result.record
        state = _outbox_state(record) if record is not None else "gone"
        item = (record.item or {}).get("number") if record is not None and record.item else None
        detail = f" ({result.error})" if result.error is not None else ""
        print(f"{k}: {state}{' ' + item if item else ''}{detail}")
        if state in ("dead", "held", "pending"):
            worst = 1
    if not keys:
        print("nothing to replay")
    return worst


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge",
        description="Azure Monitor alerts to ITSM work items: run the demo, serve the API locally, "
        "send alerts like an action group, or check the settings.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole job on the embedded sandbox and exit",
                          description="Start an ITSM stand-in, the Entra ID stand-in and the bridge on loopback, "
                          "send the bundled sample alerts, print what happened; exit 0 when all went as it should.")
    demo.add_argument("--itsm", choices=sorted(_sandbox_itsms()), default="servicenow",
                      help="which ITSM the demo runs against (its stand-in)")
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser("serve", help="serve the HTTP API locally",
                           description="Serve POST /api/alerts and GET /api/health, the same API as the Function.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7071)
    serve.add_argument("--sandbox", action="store_true", help="also start the stand-ins and point the bridge at them")
    serve.add_argument("--itsm", choices=sorted(_sandbox_itsms()), default="servicenow",
                       help="with --sandbox: which ITSM stand-in to start")
    serve.add_argument("--itsm-port", type=int, default=0, help="with --sandbox: the ITSM stand-in's port")
    serve.add_argument("--entra-port", type=int, default=0, help="with --sandbox: Entra ID stand-in port")
    serve.add_argument("--settings", help="a local.settings.json whose Values fill in unset variables")
    serve.set_defaults(func=_cmd_serve)

    send = sub.add_parser("send", help="post alert files the way an action group does",
                          description="POST each FILE to --url with an Entra ID bearer token.")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--url", required=True, help="e.g. https://<app>.azurewebsites.net/api/alerts")
    send.add_argument("--token", help="a bearer token, taken literally")
    send.add_argument("--token-env", metavar="VAR", help="read the bearer token from this environment variable")
    send.add_argument("--sandbox-entra", metavar="URL", help="mint a token from a running sandbox Entra stand-in")
    send.add_argument("--token-version", choices=["1.0", "2.0"], default="2.0", help="with --sandbox-entra")
    send.add_argument("--tenant", help="msal: tenant id")
    send.add_argument("--client-id", help="msal: client id of an app allowed to call the bridge")
    send.add_argument("--client-secret", help="msal: its secret (or set BRIDGE_SEND_CLIENT_SECRET)")
    send.add_argument("--scope", help="msal: e.g. api://<bridge app>/.default")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_cmd_send)

    check = sub.add_parser("check-config", help="validate settings and mapping file",
                           description="Validate the bridge settings; exit 0 when good, 2 with the reason.")
    check.add_argument("--settings", help="a local.settings.json whose Values fill in unset variables")
    check.set_defaults(func=_cmd_check_config)

    outbox = sub.add_parser("outbox", help="show or replay what waits for the ITSM",
                            description="list: what waits (pending), is held (credential refused) or was "
                            "dead-lettered, and why. replay KEY|--all: make it due now and run one pass.")
    outbox.add_argument("action", choices=["list", "replay"])
    outbox.add_argument("key", nargs="?", help="replay: the correlation key (see list)")
    outbox.add_argument("--all", action="store_true",
                        help="list: also what is done; replay: every record that is not done")
    outbox.add_argument("--settings", help="a local.settings.json whose Values fill in unset variables")
    outbox.set_defaults(func=_cmd_outbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))
