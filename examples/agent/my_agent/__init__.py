"""A tiny HTTP agent for KernelCube's agent-runtime templates (standard library only).

KernelCube starts it in a sandbox with `PORT` set and relays the Router's
`/v1/namespaces/{ns}/agent-runtimes/{template}/invocations/{path}` calls to it, path unchanged.
Each session gets its own agent process, so the conversation it keeps is the session's.

- `GET /` (any path): `{"agent": "my_agent", "turns": n}`; the AgentRuntimeClient's bootstrap.
- `POST /` (any path) with a JSON object `{"prompt": "..."}`: `{"reply": ..., "turn": n}`.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1024 * 1024


class Conversation:
    def __init__(self) -> None:
        self.turns: list[str] = []

    def reply(self, prompt: str) -> dict:
        self.turns.append(prompt)
        earlier = f" (earlier you said {self.turns[-2]!r})" if len(self.turns) > 1 else ""
        return {"reply": f"you said {prompt!r}{earlier}", "turn": len(self.turns)}


class AgentHandler(BaseHTTPRequestHandler):
    conversation = Conversation()  # one agent process serves one session

    def do_GET(self) -> None:
        self._answer(200, {"agent": "my_agent", "turns": len(self.conversation.turns)})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, {"error": f"the body is larger than {MAX_BODY} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._answer(400, {"error": "the body must be JSON"})
            return
        prompt = payload.get("prompt") if isinstance(payload, dict) else None
        if not isinstance(prompt, str):
            self._answer(400, {"error": "send a JSON object with a string 'prompt'"})
            return
        self._answer(200, self.conversation.reply(prompt))

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), AgentHandler)
    print(f"my_agent listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
