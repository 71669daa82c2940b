"""Azure Functions entry point (Python v2 programming model).

Only adapts the Functions types to the transport-neutral core and back; all behaviour lives in
the ``bridge`` package, shared with ``python -m bridge serve``:

- ``alerts`` (HTTP POST /api/alerts) and ``health`` (HTTP GET /api/health): :mod:`bridge.api`;
- ``outbox`` (queue trigger on ``OUTBOX_QUEUE_NAME``): one reconcile pass for the message's key,
  including the quiet resolve of a stateless alert (``AUTO_RESOLVE_AFTER``), whose message is
  sent with that delay;
- ``outbox_sweep`` (timer, every 5 minutes): re-schedules records whose time has passed with no
  message on its way (a crash between record and message, a quiet resolve whose message was
  lost). Idempotent and safe on every instance: each pass holds the record's claim.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import azure.functions as func

from bridge import telemetry
from bridge.api import ApiRequest, ApiResponse
from bridge.runtime import get_api, get_runtime

# The bridge verifies the Entra ID token itself, so the alerts route is anonymous to the host.
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

# Build settings, sessions and key cache at start-up, so bad settings show in the logs at once.
get_api()


def _serve(req: func.HttpRequest, path: str) -> func.HttpResponse:
    # The route, not req.url, names the operation: a custom routePrefix must not break it. The
    # query is what the host parsed (health's ?deep=1).
    request = ApiRequest.of(req.method, path, dict(req.headers), req.get_body(), dict(req.params))
    response: ApiResponse = get_api().handle(request)
    return func.HttpResponse(
        body=response.body_bytes(),
        status_code=response.status,
        headers=dict(response.headers),
        mimetype="application/json",
    )


def _invocation(context: func.Context | None) -> AbstractContextManager[None]:
    """The host's invocation as the parent of what the bridge records (when telemetry is on), so
    the host's request and the bridge's spans share one operation id. The worker always passes
    the context (its parameter's type must be exactly func.Context); tests may call without one."""
    trace = context.trace_context if context is not None else None
    parent, state = (trace.trace_parent, trace.trace_state) if trace is not None else (None, None)
    return telemetry.current().invocation(parent, state)


@app.function_name("alerts")
@app.route(route="alerts", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.ANONYMOUS)
def alerts(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:  # type: ignore[assignment]
    with _invocation(context):
        return _serve(req, "/api/alerts")


@app.function_name("health")
@app.route(route="health", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.FUNCTION)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _serve(req, "/api/health")


@app.function_name("outbox")
@app.queue_trigger(arg_name="msg", queue_name="%OUTBOX_QUEUE_NAME%", connection="AzureWebJobsStorage")
def outbox(msg: func.QueueMessage, context: func.Context = None) -> None:  # type: ignore[assignment]
    runtime = get_runtime()
    if runtime is None:
        # Bad settings: raising lets the runtime retry later; the record keeps the work meanwhile.
        raise RuntimeError("the bridge is misconfigured; see its logs and GET /api/health")
    with _invocation(context):
        runtime.worker.handle_message(msg.get_body())


@app.function_name("outbox_sweep")
@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False, use_monitor=False)
def outbox_sweep(timer: func.TimerRequest, context: func.Context = None) -> None:  # type: ignore[assignment]
    runtime = get_runtime()
    if runtime is None:
        logging.getLogger(__name__).warning("outbox sweep skipped: the bridge is misconfigured")
        return
    with _invocation(context):
        runtime.worker.tick()
