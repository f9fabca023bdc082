#!/usr/bin/env python3
"""An application backend for rotor's proxies (docs/proxy.md), with Python's standard
library only. It authenticates connections by a session cookie, decides subscriptions and
publications, extends connections while the session lasts, and answers two RPC methods.

    python3 docs/examples/proxy_backend.py --port 3000
    cargo run -p rotor-server --bin rotor -- --config docs/examples/proxy.toml

Every proxy is a POST of JSON to /centrifugo/<kind>; the answer is {"result": ...},
{"error": {"code", "message"}} or {"disconnect": {"code", "reason"}}, always with HTTP 200.
"""
import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Your application's sessions: cookie value -> user. A real backend looks them up in its
# session store; logging out removes the entry, and the next refresh ends the connection.
SESSIONS = {"alice-secret": "alice", "bob-secret": "bob"}
# How long a connection lives before rotor asks the refresh proxy again.
CONNECTION_TTL = 600


def session_user(headers):
    """The user of the `session` cookie, or None."""
    for part in headers.get("Cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "session":
            return SESSIONS.get(value)
    return None


def connect(req, headers):
    user = session_user(headers)
    if user is None:
        # 4500-4999: the SDK does not reconnect (3000-3499 and 4000-4499: it does).
        return {"disconnect": {"code": 4501, "reason": "unauthorized"}}
    return {"result": {
        "user": user,
        "expire_at": int(time.time()) + CONNECTION_TTL,
        "info": {"name": user.title()},           # shown in presence and publications
        "data": {"greeting": f"hello {user}"},     # the client's `connected` event data
        "channels": [f"personal:#{user}"],         # server-side subscriptions
    }}


def refresh(req, headers):
    if session_user(headers) != req["user"]:
        return {"result": {"expired": True}}      # rotor closes the connection with 3005
    return {"result": {"expire_at": int(time.time()) + CONNECTION_TTL}}


def subscribe(req, headers):
    channel = req["channel"]
    if channel.startswith("admin:") and req["user"] != "alice":
        return {"error": {"code": 1403, "message": "admins only"}}
    return {"result": {"info": {"joined_at": int(time.time())}}}


def publish(req, headers):
    text = str(req.get("data", {}).get("text", "")).strip()
    if not text:
        return {"error": {"code": 1400, "message": "empty message"}}
    # The data rotor publishes instead of what the client sent.
    return {"result": {"data": {"text": text, "by": req["user"]}}}


def rpc(req, headers):
    if req.get("method") == "whoami":
        return {"result": {"data": {"user": req["user"]}}}
    if req.get("method") == "time":
        return {"result": {"data": {"unix": int(time.time())}}}
    return {"error": {"code": 1404, "message": "unknown method"}}


HANDLERS = {"connect": connect, "refresh": refresh, "subscribe": subscribe,
            "publish": publish, "rpc": rpc}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        kind = self.path.rsplit("/", 1)[-1]
        handler = HANDLERS.get(kind)
        if handler is None:
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = json.dumps(handler(json.loads(body), self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"backend listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
