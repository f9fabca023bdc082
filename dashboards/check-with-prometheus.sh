#!/usr/bin/env bash
# Runs a real Prometheus against a real rotor under a little load and executes every query
# of dashboards/*.json and the alert rules through Prometheus's HTTP API, reporting the ones
# that fail to parse or return no data. Needs `prometheus` and `promtool` (Debian package
# `prometheus`), python3, and a built rotor (ROTOR_BIN, default target/debug/rotor).
# Usage: dashboards/check-with-prometheus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROTOR_BIN="${ROTOR_BIN:-target/debug/rotor}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

promtool check rules dashboards/prometheus/rotor-alerts.yml

cat > "$work/rotor.toml" <<TOML
[http_server]
address = "127.0.0.1"
port = 18765
[client.token]
hmac_secret_key = "check"
[client]
expired_close_delay = "1s"
[http_api]
key = "check"
[prometheus]
enabled = true
[channel.without_namespace]
allow_subscribe_for_client = true
history_size = 10
history_ttl = "1m"
TOML
"$ROTOR_BIN" --config "$work/rotor.toml" >/dev/null 2>&1 &
cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/dashboards/prometheus/rotor-alerts.yml"]
scrape_configs:
  - job_name: rotor
    static_configs: [{targets: ["127.0.0.1:18765"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address=127.0.0.1:19090 >"$work/prometheus.log" 2>&1 &
sleep 2

python3 - "$ROTOR_BIN" "$work/rotor.toml" <<'PY'
import glob, json, subprocess, sys, time, urllib.parse, urllib.request
rotor, cfg = sys.argv[1], sys.argv[2]
def api(method, body):
    req = urllib.request.Request(f"http://127.0.0.1:18765/api/{method}", json.dumps(body).encode(), {"X-API-Key": "check"})
    return json.load(urllib.request.urlopen(req))
# A little load: publications through the API, connects with good and bad tokens via the CLI.
for i in range(50):
    api("publish", {"channel": "load", "data": {"i": i}})
tok = subprocess.run([rotor, "--config", cfg, "gentoken", "--user", "u"], capture_output=True, text=True).stdout.strip()
import socket, base64, os
def ws_connect(token):
    s = socket.create_connection(("127.0.0.1", 18765))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    s.recv(4096)
    payload = json.dumps({"id": 1, "connect": {"token": token}}).encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return s
conns = [ws_connect(tok) for _ in range(3)] + [ws_connect("bad.token.here")]
api("revoke_token", {"uid": "nothing-to-kick"})
time.sleep(6)
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, c in v.items():
            (exprs.append(c) if k == "expr" and isinstance(c, str) else walk(c))
    elif isinstance(v, list):
        for c in v: walk(c)
for f in sorted(glob.glob("dashboards/*.json")):
    walk(json.load(open(f)))
for line in open("dashboards/prometheus/rotor-alerts.yml"):
    if line.strip().startswith("expr:"):
        exprs.append(line.split("expr:", 1)[1].strip())
failed, empty = 0, 0
for e in exprs:
    url = "http://127.0.0.1:19090/api/v1/query?" + urllib.parse.urlencode({"query": e})
    try:
        r = json.load(urllib.request.urlopen(url))
    except Exception as ex:
        print(f"FAIL {e}: {ex}"); failed += 1; continue
    if r["status"] != "success":
        print(f"FAIL {e}: {r}"); failed += 1
    elif not r["data"]["result"]:
        empty += 1
print(f"{len(exprs)} queries: {len(exprs) - failed} ran, {failed} failed, {empty} returned no series (no such events yet)")
sys.exit(1 if failed else 0)
PY
