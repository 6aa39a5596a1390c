"""`ray_jobs.client` against a small real HTTP server that plays an app scaling up (503s first);
the client against the real Serve app is in test_serve_surprise and test_serve_world."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ray_jobs.client import ApiError, JepaClient


def _server(statuses: list[int]):
    """Answers GET /v1/model with the next status of `statuses` (the last one repeats)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status = statuses[min(len(calls), len(statuses) - 1)]
            calls.append(self.headers.get("Authorization"))
            body = json.dumps({"version": 7} if status == 200 else {"error": "no", "request_id": "r-1"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, calls


def test_503_is_retried_then_answers():
    server, calls = _server([503, 503, 200])
    try:
        client = JepaClient(f"http://127.0.0.1:{server.server_port}", token="t", backoff_s=0.01)
        assert client.model() == {"version": 7}
        assert calls == ["Bearer t"] * 3
    finally:
        server.shutdown()


def test_other_errors_raise_at_once_with_the_message_and_request_id():
    server, calls = _server([415])
    try:
        with pytest.raises(ApiError) as err:
            JepaClient(f"http://127.0.0.1:{server.server_port}", token="", backoff_s=0.01).model()
        assert (err.value.status, err.value.message, err.value.request_id) == (415, "no", "r-1")
        assert calls == [None]  # no token, no header
    finally:
        server.shutdown()


def test_retries_give_up():
    server, calls = _server([503])
    try:
        with pytest.raises(ApiError) as err:
            JepaClient(f"http://127.0.0.1:{server.server_port}", retries=2, backoff_s=0.01).model()
        assert err.value.status == 503 and len(calls) == 3
    finally:
        server.shutdown()
