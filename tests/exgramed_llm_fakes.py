"""A recorded-reply OpenAI-compatible server for the LLM tool tests (stdlib, 127.0.0.1, free port).

Not a test module: imported by tests/eval/test_chat_judge.py and tests/data/test_extend_captions.py (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# responder(request_json) -> (HTTP status, reply content string) or (status, raw body bytes)
Responder = Callable[[dict[str, Any]], tuple[int, "str | bytes"]]


def completion(content: str, model: str = "recorded") -> dict[str, Any]:
    return {"id": "chatcmpl-recorded", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class RecordedServer:
    """Serves ``/v1/chat/completions`` from ``responder`` and records every request body and its
    headers (looked up case-insensitively, as HTTP header names are).

    ``hold_after=N``: requests after the first N are held (not answered) until :meth:`release`, so a
    test can interrupt a client at a known point however fast or slow the machine is.
    """

    def __init__(self, responder: Responder, delay: float = 0.0, hold_after: int | None = None) -> None:
        self.responder = responder
        self.delay = delay
        self.hold_after = hold_after
        self._released = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[Message] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "recorded"}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length))
                with owner._lock:
                    position = len(owner.requests)
                    owner.requests.append(payload)
                    owner.headers.append(self.headers)
                if owner.hold_after is not None and position >= owner.hold_after:
                    owner._released.wait(timeout=120)
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                if owner.delay:
                    time.sleep(owner.delay)
                status, reply = owner.responder(payload)
                if isinstance(reply, bytes):
                    self._send(status, reply)
                elif status == 200:
                    self._send(200, json.dumps(completion(reply, payload.get("model", "recorded"))).encode())
                else:
                    self._send(status, json.dumps({"error": {"message": reply}}).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def release(self) -> None:
        """Answer the held requests and every later one."""
        self._released.set()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> RecordedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def user_payload(request: dict[str, Any]) -> dict[str, Any]:
    """The JSON object sent as the user message by extend-captions."""
    return json.loads(request["messages"][-1]["content"])
