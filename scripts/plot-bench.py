#!/usr/bin/env python3
"""Draws docs/benchmarks.png from rotor-bench's --json results (one object per line):
fan-out latency (p50 and p99) against delivered messages per second for each target at
10k subscribers, and server memory per idle connection for each target."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out = sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks.png"

fig, (lat, mem) = plt.subplots(1, 2, figsize=(13, 5))
fan = [r for r in rows if r.get("scenario") == "fanout" and r.get("nodes", 1) == 1]
subs = max((r["subscribers"] for r in fan), default=0)
for target in dict.fromkeys(r["target"] for r in fan):
    pts = sorted(
        (r["delivered_per_s"], r["p50_ms"], r["p99_ms"])
        for r in fan
        if r["target"] == target and r["subscribers"] == subs
    )
    if not pts:
        continue
    x = [p[0] for p in pts]
    line = lat.plot(x, [p[2] for p in pts], marker="o", label=f"{target} p99")[0]
    lat.plot(x, [p[1] for p in pts], marker=".", linestyle="--",
             color=line.get_color(), label=f"{target} p50")
lat.set_xscale("log")
lat.set_yscale("log")
lat.set_xlabel("delivered messages per second")
lat.set_ylabel("end-to-end latency, ms (from intended send time)")
lat.set_title(f"Fan-out to {subs:,} subscribers on one channel")
lat.grid(True, which="both", alpha=0.3)
lat.legend(fontsize=7)

idle = [r for r in rows if r.get("scenario") == "idle-slope" and r.get("shape", "shared") == "shared"]
names = [r["target"] for r in idle]
vals = [r["kib_per_connection"] for r in idle]
bars = mem.bar(names, vals, color="tab:blue")
for b, v in zip(bars, vals):
    mem.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom")
mem.axhline(8, color="tab:red", linestyle=":", label="target: 8 KiB")
mem.set_ylabel("server RSS per idle subscribed connection, KiB")
mem.set_title("Memory per idle connection (slope over 1k..19k)")
mem.legend()
plt.setp(mem.get_xticklabels(), rotation=20, ha="right")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
