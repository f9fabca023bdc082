"""Renders the panels of dashboards/rotor-token-lifecycle.json to docs/token-lifecycle.png
from a real Prometheus scraping a real rotor under token-lifecycle load: short-lived tokens
refreshed in place, connections that never refresh (closed with 3005 after the grace),
expired and forged tokens, and revocations that kick live connections.

Grafana is not installable from the registries this project can reach, so the panels are
drawn with matplotlib from the same PromQL the dashboard uses (Prometheus's query_range).

Run: dashboards/check-with-prometheus.sh's requirements, plus the SDK virtualenv with
matplotlib:  tests/sdk/.venv/bin/pip install matplotlib
             tests/sdk/.venv/bin/python dashboards/render-token-lifecycle.py
"""
import asyncio, json, os, subprocess, sys, tempfile, time, urllib.parse, urllib.request

import jwt
import matplotlib
import websockets

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROTOR = os.environ.get("ROTOR_BIN", "target/release/rotor")
SECRET, KEY, PORT, PROM = "render", "render", 18766, 19091
work = tempfile.mkdtemp()
with open(f"{work}/rotor.toml", "w") as f:
    f.write(f"""
[http_server]
address = "127.0.0.1"
port = {PORT}
[client.token]
hmac_secret_key = "{SECRET}"
[client]
expired_close_delay = "2s"
ping_interval = "0s"
[http_api]
key = "{KEY}"
[prometheus]
enabled = true
[channel.without_namespace]
allow_subscribe_for_client = true
""")
with open(f"{work}/prometheus.yml", "w") as f:
    f.write(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: rotor\n    static_configs: [{{targets: ['127.0.0.1:{PORT}']}}]\n")
procs = [
    subprocess.Popen([ROTOR, "--config", f"{work}/rotor.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    subprocess.Popen(["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
                      f"--web.listen-address=127.0.0.1:{PROM}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
]
time.sleep(2)


def token(sub, ttl=None, jti=None):
    claims = {"sub": sub, "iat": int(time.time())}
    if ttl:
        claims["exp"] = int(time.time()) + ttl
    if jti:
        claims["jti"] = jti
    return jwt.encode(claims, SECRET, algorithm="HS256")


def api(method, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/{method}", json.dumps(body).encode(), {"X-API-Key": KEY})
    return json.load(urllib.request.urlopen(req))


async def client(i, refresh, duration):
    """Connects with a 4s token; refreshes it (in place) when asked to, else lets it expire."""
    url = f"ws://127.0.0.1:{PORT}/connection/websocket"
    end = time.time() + duration
    while time.time() < end:
        try:
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps({"id": 1, "connect": {"token": token(f"u{i}", 4, f"j{i}-{time.time()}")}}))
                await ws.recv()
                n = 2
                while time.time() < end:
                    await asyncio.sleep(3 + (i % 3) * 0.5)
                    if refresh:
                        await ws.send(json.dumps({"id": n, "refresh": {"token": token(f"u{i}", 4)}}))
                        n += 1
                    try:
                        await asyncio.wait_for(ws.recv(), 5)
                    except asyncio.TimeoutError:
                        pass
        except Exception:
            await asyncio.sleep(0.5)


async def troublemakers(duration):
    url = f"ws://127.0.0.1:{PORT}/connection/websocket"
    end = time.time() + duration
    k = 0
    while time.time() < end:
        k += 1
        for t in [jwt.encode({"sub": "x", "exp": int(time.time()) - 10}, SECRET), "forged.token.x"]:
            try:
                async with websockets.connect(url) as ws:
                    await ws.send(json.dumps({"id": 1, "connect": {"token": t}}))
                    await asyncio.wait_for(ws.recv(), 2)
            except Exception:
                pass
        # A leaked token: connect with it, then revoke it.
        try:
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps({"id": 1, "connect": {"token": token("victim", 600, f"leak{k}")}}))
                await ws.recv()
                api("revoke_token", {"uid": f"leak{k}", "reason": "demo"})
                await asyncio.wait_for(ws.recv(), 2)
        except Exception:
            pass
        await asyncio.sleep(4)


async def load(duration):
    await asyncio.gather(*[client(i, refresh=(i % 4 != 0), duration=duration) for i in range(40)], troublemakers(duration))

start = time.time()
asyncio.run(load(150))
end = time.time()

dash = json.load(open("dashboards/rotor-token-lifecycle.json"))
panels = dash["panels"]
cols = 2
rows = (len(panels) + 1) // 2
fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows))
for ax, p in zip(axes.flat, panels):
    for t in p["targets"]:
        q = t["expr"].replace("[15m]", "[1m]").replace("[5m]", "[1m]").replace("[1h]", "[2m]")
        url = f"http://127.0.0.1:{PROM}/api/v1/query_range?" + urllib.parse.urlencode({"query": q, "start": start + 20, "end": end, "step": 5})
        r = json.load(urllib.request.urlopen(url))
        for series in r["data"]["result"]:
            label = t["legendFormat"]
            for k, v in series["metric"].items():
                label = label.replace("{{" + k + "}}", v)
            xs = [float(x) - start for x, _ in series["values"]]
            ys = [float(y) for _, y in series["values"]]
            ax.plot(xs, ys, label=label)
    ax.set_title(p["title"], fontsize=10)
    ax.set_xlabel("seconds", fontsize=8)
    if ax.lines:
        ax.legend(fontsize=7, loc="upper left")
for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
fig.suptitle("rotor: token lifecycle (panels of dashboards/rotor-token-lifecycle.json, rendered from Prometheus with matplotlib)", fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.98))
fig.savefig("docs/token-lifecycle.png", dpi=80)
for p in procs:
    p.terminate()
print("wrote docs/token-lifecycle.png")
