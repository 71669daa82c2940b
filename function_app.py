"""Azure Functions entry point (Python v2 programming model).

Only adapts ``func.HttpRequest`` to the transport-neutral :mod:`bridge.api` and back; all
behaviour lives in the ``bridge`` package, shared with ``python -m bridge serve``.
"""

from __future__ import annotations

import azure.functions as func

from bridge.api import ApiRequest, ApiResponse
from bridge.runtime import get_api

# The bridge verifies the Entra ID token itself, so the alerts route is anonymous to the host.
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

# Build settings, sessions and key cache at start-up, so bad settings show in the logs at once.
get_api()


def _serve(req: func.HttpRequest, path: str) -> func.HttpResponse:
    # The route, not req.url, names the operation: a custom routePrefix must not break it.
    request = ApiRequest.of(req.method, path, dict(req.headers), req.get_body())
    response: ApiResponse = get_api().handle(request)
    return func.HttpResponse(
        body=response.body_bytes(),
        status_code=response.status,
        headers=dict(response.headers),
        mimetype="application/json",
    )


@app.function_name("alerts")
@app.route(route="alerts", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.ANONYMOUS)
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    return _serve(req, "/api/alerts")


@app.function_name("health")
@app.route(route="health", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.FUNCTION)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _serve(req, "/api/health")
