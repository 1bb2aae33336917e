"""The HTTP side: standard-library ThreadingHTTPServer, one thread per connection, JSON in and out.

Every error a client can cause is a 4xx with an OpenAI-style JSON body and never reaches the
scheduler; the handler catches everything else too, so one bad request cannot stop the server.
Handler threads only wait on their request's event queue: the program runs in the engine's one
scheduler thread. While waiting, a handler peeks at its socket so that a client that went away
(the page's stop button aborts its fetch) frees its generation slot at the next step.
"""

import json
import os
import queue
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import api, request_body, responses
from .engine import ServerBusy

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Everything the page needs is in the page itself; the policy makes the browser refuse anything else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:"
)


class ClientGone(Exception):
    pass


class App:
    """What handlers share: the engine, the tokenizer, limits, the page."""

    def __init__(
        self,
        engine,
        tokenizer,
        template,
        limits: api.Limits,
        model_name: str,
        max_body_bytes: int,
        access_log: bool = False,
    ):
        self.engine, self.tokenizer, self.template, self.limits = engine, tokenizer, template, limits
        self.model_name, self.max_body_bytes, self.access_log = model_name, max_body_bytes, access_log
        self.started = time.time()
        with open(os.path.join(STATIC, "index.html"), "rb") as f:
            self.page = f.read()


class Server(ThreadingHTTPServer):
    """Bounds open connections too: each holds a thread, and max_concurrent only bounds generation."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's listen backlog of 5 resets connections when 16 clients arrive at once

    def __init__(self, address, app: App, max_connections: int):
        self.app = app
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                body = json.dumps(api.ApiError(503, "too many open connections", "server_busy").body()).encode()
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for JSON answers; streams close their connection
    default_request_version = "HTTP/1.0"  # so even a garbage request line gets a status line and a JSON error
    server_version = "paddlebloom"
    sys_version = ""
    timeout = 60  # seconds a connection may sit idle or trickle a request

    @property
    def app(self) -> App:
        return self.server.app

    # ---- plumbing
    def log_message(self, fmt, *args):
        if self.app.access_log:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, oversized headers, ...) as JSON too. Its 5xx are
        the client's doing (501: a method it does not know, 505: HTTP/2 in a text request line), and
        a 5xx here means a server fault: an unknown method is answered as PUT is, a version as 400."""
        if code == 501:
            return self._other_method()
        code = 400 if code >= 500 else code
        self.close_connection = True
        self._json(code, api.ApiError(code, message or self.responses.get(code, ("error",))[0]).body())

    def _json(self, status: int, body, headers=()):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, e: api.ApiError):
        # One line whatever the client sent: messages quote its field names and values, which may hold newlines.
        e.message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in e.message)
        self._json(e.status, e.body(), [("Retry-After", "1")] if e.status == 429 else [])

    def _guard(self, route):
        """Runs a route. Until the route reads the request's body, the connection is to close (the
        unread body would be taken for the next request); a body still unread after the answer is
        drained, so that the close does not reset the connection before the client reads the answer."""
        self._keep_alive = not self.close_connection  # what the client asked for
        self._unread = request_body.pending(self.headers)
        self.close_connection = self.close_connection or self._unread > 0
        try:
            route()
        except api.ApiError as e:
            try:
                self._error(e)
            except OSError:  # the client left before its answer
                self.close_connection, self._unread = True, 0
        except (ClientGone, BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection, self._unread = True, 0  # gone or too slow: nothing to drain for
        except Exception as e:  # noqa: BLE001 - the server must survive whatever a request triggers
            self.close_connection = True
            sys.stderr.write(f"serve: error: {self.command} {self.path}: {type(e).__name__}: {e}\n")
            try:
                self._error(api.ApiError(500, f"internal error: {type(e).__name__}", "server_error"))
            except OSError:
                pass
        if self._unread:
            request_body.discard(self.connection, self.rfile, self._unread)

    def handle_expect_100(self):
        """`Expect: 100-continue` (curl sends it for bodies over 1 MB): refuse a body that is too large or
        has no length before the client sends it; the base class answered 100 Continue to everything."""
        if self.command == "POST":
            try:
                request_body.content_length(self.headers, self.app.max_body_bytes)
            except api.ApiError as e:
                self.close_connection = True
                self._error(e)
                return False
        return super().handle_expect_100()

    # ---- routes
    def do_GET(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def _not_allowed(self):
        self.close_connection = True
        self._json(
            405, api.ApiError(405, f"method {self.command} is not allowed here").body(), [("Allow", "GET, POST")]
        )

    def _other_method(self):
        self._guard(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _other_method

    def _get(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.app.page)))
            self.send_header("Content-Security-Policy", PAGE_POLICY)
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(self.app.page)
        elif path == "/health":
            self._json(
                200,
                {
                    "status": "ok",
                    "model": self.app.model_name,
                    "uptime_s": round(time.time() - self.app.started, 1),
                    **self.app.engine.snapshot(),
                },
            )
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.app.model_name,
                            "object": "model",
                            "created": int(self.app.started),
                            "owned_by": "paddlebloom",
                            "max_prompt_tokens": self.app.limits.max_prompt_tokens,
                            "max_new_tokens": self.app.limits.max_new_tokens,
                        }
                    ],
                },
            )
        elif path in ("/v1/completions", "/v1/chat/completions"):
            self._not_allowed()
        else:
            raise api.ApiError(404, f"no such endpoint: GET {path}", "not_found_error")

    def _post(self):
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/completions", "/v1/chat/completions"):
            raise api.ApiError(
                404 if path not in ("/", "/health", "/v1/models") else 405,
                f"no such endpoint: POST {path}",
                "not_found_error",
            )
        body = self._read_json()
        chat = path == "/v1/chat/completions"
        app = self.app
        if chat:
            req = api.parse_chat(body, app.tokenizer, app.template, app.limits)
        else:
            req = api.parse_completion(body, app.tokenizer, app.limits)
        if body.get("model") not in (None, app.model_name):
            raise api.ApiError(
                404,
                f"model '{body['model']}' is not served here (GET /v1/models lists '{app.model_name}')",
                "not_found_error",
                "model",
            )
        try:
            jobs = app.engine.submit_many(req.jobs())
        except ServerBusy as e:
            raise api.ApiError(429, str(e), "server_busy") from None
        answer = responses.Answer(req, jobs, app.tokenizer, app.model_name, chat)
        try:
            if req.stream:
                self._stream(answer)
            else:
                self._json(200, answer.complete(self._events(jobs)))
        except responses.ServerFault as e:
            raise api.ApiError(500, str(e), "server_error") from None
        finally:
            for job in jobs:
                job.cancel()  # a no-op when it finished; frees the slot when we left early

    def _read_json(self):
        """The body as checked JSON (request_body says what is refused and why); refused from its
        headers alone when it is too large or has no length to trust."""
        self.close_connection = True  # when refused before the body is read, where the next request starts is unknown
        length = request_body.content_length(self.headers, self.app.max_body_bytes)
        raw = request_body.read(self.rfile, length)
        self._unread, self.close_connection = 0, not self._keep_alive
        return request_body.parse(raw)

    # ---- generation
    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _events(self, jobs):
        """(choice index, event) for the request's jobs as they come, until each has ended; raises
        ClientGone when the client hangs up meanwhile. Every event releases the shared signal
        once, so one acquire means one event is waiting in some job's queue."""
        signal, pending = jobs[0].signal, list(range(len(jobs)))
        while pending:
            if not signal.acquire(timeout=0.2):
                if self._client_gone():
                    for job in jobs:
                        job.cancel()
                    raise ClientGone()
                continue
            for i in pending:
                try:
                    event = jobs[i].events.get_nowait()
                except queue.Empty:
                    continue
                if isinstance(event, tuple):
                    pending.remove(i)
                yield i, event
                break

    def _stream(self, answer):
        self.close_connection = True  # the stream's end is the connection's end
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def send(data: bytes):
            self.wfile.write(b"data: " + data + b"\n\n")
            self.wfile.flush()

        try:
            for chunk in answer.chunks(self._events(answer.jobs)):
                send(json.dumps(chunk, ensure_ascii=False).encode("utf-8"))
        except responses.ServerFault as e:
            send(json.dumps(api.ApiError(500, str(e), "server_error").body()).encode("utf-8"))
        send(b"[DONE]")
