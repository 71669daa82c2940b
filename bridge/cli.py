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
from .logs import Level, configure, level_for
from .state.stats import outbox_state

__all__ = ["main"]

logger = logging.getLogger(__name__)

# Where ``send`` takes the msal client secret from (a secret on the command line is visible to all).
SEND_SECRET_VARIABLE = "BRIDGE_SEND_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret


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
    from .server import BridgeServer

    env = _settings_file_env(args.settings)
    stack: Any = None
    runtime: Any = None
    server: Any = None
    replaced: list[str] = []
    try:
        if args.sandbox:
            from .sandbox.stack import SandboxStack

            stack = SandboxStack(itsm=args.itsm, itsm_port=args.itsm_port, entra_port=args.entra_port)
            try:
                stack.start()
            except OSError as exc:
                fixed = (("--itsm-port", args.itsm_port), ("--entra-port", args.entra_port))
                ports = ", ".join(f"{flag} {value}" for flag, value in fixed if value)
                where = f" ({ports})" if ports else ""
                return _failed(f"serve: cannot start the sandbox stand-ins{where}: {_os_reason(exc)}")
            env, replaced = stack.serve_env(env)
            if args.write_settings:
                try:
                    _write_function_settings(Path(args.write_settings), stack.function_settings())
                except (OSError, ValueError) as exc:
                    return _failed(f"serve: cannot write {args.write_settings}: {_os_reason(exc)}")
        # Listen first (a port in use is the one thing to say then), serve once the API is built.
        front = _Front()
        try:
            listening = BridgeServer(front, args.host, args.port)
        except (OSError, OverflowError) as exc:
            return _failed(f"serve: cannot listen on {args.host}:{args.port}: {_os_reason(exc)}")
        try:
            front.api, runtime, bad_setting = _api_like_the_function(env, json_logs=args.log_format == "json")
        finally:
            server = listening.start()  # stop() needs it started, even when interrupted here
        # The outbox worker drives what the HTTP answers left queued (202), in this process.
        if runtime is not None:
            runtime.worker.start()
        print(f"bridge {__version__} serving {server.url}/api/alerts and {server.url}/api/health", flush=True)
        if runtime is not None:
            store = runtime.reconciler.store.name
            print(f"  state: {store} ({_store_where(runtime)}), outbox worker running", flush=True)
        else:
            print(f"  misconfigured ({bad_setting}): alerts get 503 and /api/health names the setting", flush=True)
        if stack is not None:
            _print_sandbox(stack, server.url, replaced, args.write_settings)
        print("Ctrl-C to stop", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait()
    except KeyboardInterrupt:
        pass  # Ctrl-C, while serving or still starting: stop what runs
    finally:
        _stop_all(server, runtime, stack)
    return 0


def _stop_all(server: Any, runtime: Any, stack: Any) -> None:
    # A second Ctrl-C must not cut the clean-up short (and print a traceback).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if server is not None:
            print("stopping", flush=True)
            server.stop()
        if runtime is not None:
            runtime.close()
        if stack is not None:
            stack.stop()
    finally:
        signal.signal(signal.SIGINT, previous)


class _Front:
    """What the server serves: the API, once built (the server binds its port before)."""

    api: Any = None

    def handle(self, request: Any) -> Any:
        if self.api is None:
            from .api import unavailable

            return unavailable("the bridge is starting")
        return self.api.handle(request)


def _failed(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _os_reason(exc: BaseException) -> str:
    """An OSError's reason without the traceback (``Address already in use``), else its message."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(reason)


def _api_like_the_function(env: Mapping[str, str], *, json_logs: bool = False) -> tuple[Any, Any, str]:
    """The API and runtime from ``env``, and the bad setting's name ("" when none); with bad
    settings, what the Function serves then: an API answering 503 (alerts) and 503
    ``misconfigured`` naming the setting (health), and no runtime. The reason goes to stderr
    once, as the Function logs it (a log record with ``json_logs``: stderr stays all JSON)."""
    from .api import UnavailableApi
    from .errors import ConfigError
    from .runtime import build_runtime

    try:
        runtime = build_runtime(env)
    except ConfigError as exc:
        _say_on_stderr(
            f"invalid settings: {exc} (alerts get 503 until fixed; python -m bridge check-config says why)",
            json_logs,
        )
        return UnavailableApi(exc.setting, str(exc)), None, exc.setting
    except Exception as exc:
        # As the Function: never a 500 (Azure Monitor would not retry it), 503 instead. Only the
        # type: a message might quote a setting's value (a connection string, say).
        logger.debug("the bridge could not start", exc_info=True)
        _say_on_stderr(f"the bridge could not start: {type(exc).__name__} (alerts get 503; -v shows where)",
                       json_logs)
        return UnavailableApi("(start-up)", f"start-up failed: {type(exc).__name__}"), None, "(start-up)"
    return runtime.api, runtime, ""


def _say_on_stderr(message: str, json_logs: bool) -> None:
    if json_logs:
        logger.error("%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


def _print_sandbox(stack: Any, url: str, replaced: Sequence[str], written: str | None) -> None:
    print(f"  {stack.itsm.display_name} stand-in: {stack.itsm.url} ({stack.itsm.credentials()})", flush=True)
    print(f"  Entra ID stand-in:   {stack.entra.base_url}", flush=True)
    if replaced:
        print(f"  from the sandbox, not your settings: {', '.join(replaced)}", flush=True)
    if written:
        print(f"  func start: wrote the settings that point a Function at the stand-ins into {written}", flush=True)
    else:
        print("  func start: these local.settings.json Values point a Function at the stand-ins "
              "(--write-settings PATH writes them):", flush=True)
        print(json.dumps(stack.function_settings(), indent=2), flush=True)
    print(
        f"  try: {_python_shown()} -m bridge send bridge/sandbox/samples/metric_static_fired.testaction.json "
        f"--url {url}/api/alerts --sandbox-entra {stack.entra.base_url}",
        flush=True,
    )


def _python_shown() -> str:
    """This interpreter as a command to copy: ``.venv/bin/python`` when it is the project's (the
    system Python lacks the requirements), else ``python``."""
    try:
        relative = os.path.relpath(sys.executable)
    except ValueError:  # another drive
        return "python"
    return relative if not relative.startswith("..") and not os.path.isabs(relative) else "python"


def _write_function_settings(path: Path, values: Mapping[str, str]) -> None:
    """Merge ``values`` into the ``Values`` of a local.settings.json (made when missing; its other
    values and keys are kept)."""
    data: dict[str, Any] = {"IsEncrypted": False, "Values": {}}
    if path.exists():
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict) or not isinstance(loaded.get("Values", {}), dict):
            raise ValueError("not a local.settings.json (an object with a Values object)")
        if loaded.get("IsEncrypted") is True:
            raise ValueError("its values are encrypted (func settings decrypt first)")
        data = loaded
    data["Values"] = {**data.get("Values", {}), **values}
    text = json.dumps(data, indent=2) + "\n"
    partial = path.with_name(path.name + ".tmp")
    # Owner-only: a local.settings.json usually holds secrets (the sandbox's are not, but the rest may be).
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(partial, path)


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

        try:
            return mint_remote(args.sandbox_entra, version=args.token_version)
        except RuntimeError as exc:  # unreachable, or it refused: its message says which
            raise SystemExit(f"send: no token: {exc}") from None
    if args.tenant and args.client_id and args.scope:
        return _msal_token(args)
    raise SystemExit(
        "send: choose a token: --token-env VAR, --sandbox-entra URL, "
        "--tenant/--client-id/--scope with BRIDGE_SEND_CLIENT_SECRET set (msal client credentials), "
        "or --token"
    )


def _msal_token(args: argparse.Namespace) -> str:
    import msal
    import requests

    secret = args.client_secret or os.environ.get(SEND_SECRET_VARIABLE, "")
    if not secret:
        raise SystemExit(f"send: set {SEND_SECRET_VARIABLE} (or give --client-secret)")
    authority = f"https://login.microsoftonline.com/{args.tenant}"
    try:
        app = msal.ConfidentialClientApplication(args.client_id, authority=authority, client_credential=secret)
        result = app.acquire_token_for_client(scopes=[args.scope])
    except (requests.RequestException, OSError) as exc:
        raise SystemExit(
            f"send: cannot reach Entra ID at {authority} for a token ({type(exc).__name__}); "
            "check the network, proxy and --tenant"
        ) from None
    except ValueError as exc:  # msal: an authority or answer it cannot use
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise SystemExit(f"send: no token from Entra ID: {detail}") from None
    if "access_token" not in result:
        detail = (str(result.get("error_description") or "").splitlines() or [""])[0]
        raise SystemExit(f"send: no token from Entra ID: {result.get('error')}: {detail}")
    return str(result["access_token"])


def _warn_of_secrets_in_argv(args: argparse.Namespace) -> None:
    """A secret on the command line shows in the process list and the shell's history."""
    for given, option, instead in (
        (args.token, "--token", "--token-env VAR"),
        (args.client_secret, "--client-secret", f"the {SEND_SECRET_VARIABLE} environment variable"),
    ):
        if given:
            print(
                f"send: warning: {option} puts a secret on the command line, where the process list and "
                f"shell history show it; prefer {instead}",
                file=sys.stderr,
                flush=True,
            )


def _cmd_send(args: argparse.Namespace) -> int:
    import requests

    _warn_of_secrets_in_argv(args)
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
        shown = ("(set, hidden)" if spec.secret else value) if value else f"(default: {spec.shown_default})"
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


def _outbox_list(runtime: Any, *, show_all: bool) -> int:
    now = time.time()
    rows = [["key", "state", "attempts", "next attempt", "failing for", "alertId", "why"]]
    counts: dict[str, int] = {}
    for record in sorted(runtime.reconciler.store.records(), key=lambda r: r.updated_at):
        state = outbox_state(record)
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
        keys = [r.key for r in reconciler.store.records() if outbox_state(r) != "done"]
    elif key:
        keys = [reconciler.record_key(key.strip().lower())]
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
        state = outbox_state(record) if record is not None else "gone"
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
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: the bridge's debug logging (other libraries still only warn); "
                        "-vv: everyone's, urllib3 and the Azure SDK included")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole job on the embedded sandbox and exit",
                          description="Start an ITSM stand-in, the Entra ID stand-in and the bridge on loopback, "
                          "send the bundled sample alerts, print what happened; exit 0 when all went as it should.")
    demo.add_argument("--itsm", choices=sorted(_sandbox_itsms()), default="servicenow",
                      help="which ITSM the demo runs against (its stand-in)")
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser(
        "serve", help="serve the HTTP API locally",
        description="Serve POST /api/alerts and GET /api/health, the same API as the Function, with the "
        "outbox worker in this process. Settings come from the environment, over the Values of --settings. "
        "Bad settings do not stop it: like the Function it then answers 503 (health: misconfigured, "
        "naming the setting) and says why on stderr. Each alert (and each outbox pass) is one line on "
        "stderr: time, alert or outbox, HTTP status or attempt, action, work item, duration, correlation "
        "key, alert type, error; -v adds the bridge's debug lines.",
        epilog="With --sandbox every setting still comes from the environment and --settings (MAPPING_FILE, "
        "ALLOWED_SUBSCRIPTION_IDS, timings, ...), except those that point at the stand-ins, which the sandbox "
        "always sets: ITSM_ADAPTER (--itsm), the ITSM's URL and credentials, AUTH_TENANT_ID, AUTH_AUDIENCES, "
        "AUTH_OPENID_CONFIG_URL, and a fresh SQLite state (STATE_STORE, STATE_SQLITE_PATH). The sandbox's "
        "AUTH_ALLOWED_APP_IDS and AUTH_REQUIRED_ROLE apply only when those are unset. It prints the "
        "settings a Function (func start) needs to use the stand-ins; fix their ports with --itsm-port "
        "and --entra-port so those stay valid across restarts.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=7071, help="port to listen on, 0 for a free one (default 7071)")
    serve.add_argument("--sandbox", action="store_true", help="also start the stand-ins and point the bridge at them")
    serve.add_argument("--itsm", choices=sorted(_sandbox_itsms()), default="servicenow",
                       help="with --sandbox: which ITSM stand-in to start")
    serve.add_argument("--itsm-port", type=_port, default=0, metavar="PORT",
                       help="with --sandbox: the ITSM stand-in's port (default: a free one)")
    serve.add_argument("--entra-port", type=_port, default=0, metavar="PORT",
                       help="with --sandbox: the Entra ID stand-in's port (default: a free one)")
    serve.add_argument("--write-settings", metavar="PATH",
                       help="with --sandbox: merge the settings a Function needs to use the stand-ins into the "
                       "Values of this local.settings.json (made when missing) instead of printing them")
    serve.add_argument("--settings", help="a local.settings.json whose Values fill in unset variables")
    serve.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="stderr's log lines: text, for a person (default), or json, one object per line "
                       "(time, level, logger, message and the alert's fields)")
    # Also after the command, where one reaches for it when serve's lines are not enough.
    serve.add_argument("-v", "--verbose", dest="serve_verbose", action="count", default=0,
                       help="-v: the bridge's debug lines too; -vv: every library's (as python -m bridge -v serve)")
    serve.set_defaults(func=_cmd_serve)

    send = sub.add_parser(
        "send", help="post alert files the way an action group does",
        description="POST each FILE to --url with an Entra ID bearer token. Keep secrets off the command "
        "line, where the process list and shell history show them: pass a token with --token-env VAR and "
        f"the msal client secret in {SEND_SECRET_VARIABLE}.",
    )
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--url", required=True, help="e.g. https://<app>.azurewebsites.net/api/alerts")
    send.add_argument("--token",
                      help="a bearer token, taken literally (visible in the process list: prefer --token-env)")
    send.add_argument("--token-env", metavar="VAR", help="read the bearer token from this environment variable")
    send.add_argument("--sandbox-entra", metavar="URL", help="mint a token from a running sandbox Entra stand-in")
    send.add_argument("--token-version", choices=["1.0", "2.0"], default="2.0", help="with --sandbox-entra")
    send.add_argument("--tenant", help="msal: tenant id")
    send.add_argument("--client-id", help="msal: client id of an app allowed to call the bridge")
    send.add_argument("--client-secret",
                      help=f"msal: its secret; prefer setting {SEND_SECRET_VARIABLE} (on the command line it "
                      "is visible in the process list)")
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
    outbox.add_argument("key", nargs="?", help="replay: the key (see list) or the correlationId an answer gave")
    outbox.add_argument("--all", action="store_true",
                        help="list: also what is done; replay: every record that is not done")
    outbox.add_argument("--settings", help="a local.settings.json whose Values fill in unset variables")
    outbox.set_defaults(func=_cmd_outbox)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "write_settings", None) and not args.sandbox:
        parser.error("--write-settings needs --sandbox (it writes the settings that point at the stand-ins)")
    # serve shows one line per alert; the others print their own results, so only warnings.
    default: Level = "info" if args.command == "serve" else "warning"
    verbosity = args.verbose + getattr(args, "serve_verbose", 0)
    restore = configure(level_for(verbosity, default), getattr(args, "log_format", "text"))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
