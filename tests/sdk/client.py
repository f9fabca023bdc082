"""Drives the official centrifuge-python client from JSON commands on stdin and reports every
event as one JSON line on stdout. Used by rotor's end-to-end tests; see tests/src/lib.rs.

Environment: BASE (http://host:port), TOKEN (initial connection token), PROTOBUF=1 (the
Protobuf protocol: payloads go out as bytes, and are reported as `data` when they are JSON
text, and always as `data_b64`), COOKIE (a Cookie header on the WebSocket upgrade)."""
import base64
import asyncio
import dataclasses
import json
import os
import sys

import centrifuge
from centrifuge import (
    Client,
    ClientEventHandler,
    DeltaType,
    StreamPosition,
    SubscriptionEventHandler,
)
from centrifuge.filter import FilterNode


PROTOBUF = os.environ.get("PROTOBUF") == "1"


def payload(cmd):
    """A payload the test gave: JSON, or bytes in base64 (`b64`)."""
    if not PROTOBUF:
        return cmd["data"]
    if "b64" in cmd:
        return base64.b64decode(cmd["b64"])
    return json.dumps(cmd["data"]).encode()


def seen(data):
    """A payload the SDK handed over, as the test reads it."""
    if not PROTOBUF or not isinstance(data, (bytes, bytearray)):
        return {"data": data}
    b64 = base64.b64encode(data).decode()
    try:
        return {"data": json.loads(data.decode("utf-8")), "data_b64": b64}
    except (UnicodeDecodeError, ValueError):
        return {"data": None, "data_b64": b64}


def out(event, **data):
    sys.stdout.write(json.dumps({"event": event, **data}, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)) + "\n")
    sys.stdout.flush()


class Events(ClientEventHandler):
    async def on_connecting(self, ctx):
        out("connecting", code=ctx.code, reason=ctx.reason)

    async def on_connected(self, ctx):
        out("connected", client=ctx.client, data=ctx.data)

    async def on_disconnected(self, ctx):
        out("disconnected", code=ctx.code, reason=ctx.reason)

    async def on_error(self, ctx):
        out("error", error=str(ctx.error))


class SubEvents(SubscriptionEventHandler):
    def __init__(self, channel):
        self.channel = channel

    async def on_subscribing(self, ctx):
        out("subscribing", channel=self.channel, code=ctx.code, reason=ctx.reason)

    async def on_subscribed(self, ctx):
        out("subscribed", channel=self.channel, recoverable=ctx.recoverable, positioned=ctx.positioned,
            wasRecovering=ctx.was_recovering, recovered=ctx.recovered,
            streamPosition={"offset": ctx.stream_position.offset, "epoch": ctx.stream_position.epoch} if ctx.stream_position else None)

    async def on_unsubscribed(self, ctx):
        out("unsubscribed", channel=self.channel, code=ctx.code, reason=ctx.reason)

    async def on_publication(self, ctx):
        info = {"client": ctx.pub.info.client, "user": ctx.pub.info.user} if ctx.pub.info else None
        out("publication", channel=self.channel, offset=ctx.pub.offset, info=info, **seen(ctx.pub.data))

    async def on_join(self, ctx):
        out("join", channel=self.channel, info={"client": ctx.info.client, "user": ctx.info.user})

    async def on_leave(self, ctx):
        out("leave", channel=self.channel, info={"client": ctx.info.client, "user": ctx.info.user})

    async def on_error(self, ctx):
        out("sub_error", channel=self.channel, error=str(ctx.error))


async def main():
    base = os.environ["BASE"]
    client = Client(base.replace("http", "ws", 1) + "/connection/websocket", events=Events(),
                    token=os.environ.get("TOKEN", ""), proxy=None, min_reconnect_delay=0.1, max_reconnect_delay=0.5,
                    use_protobuf=PROTOBUF,
                    headers={"Cookie": os.environ["COOKIE"]} if os.environ.get("COOKIE") else None)
    subs = {}

    def snake(name):
        return "".join("_" + c.lower() if c.isupper() else c for c in name)

    def sub(channel, opts=None):
        if channel not in subs:
            kwargs = {snake(k): v for k, v in (opts or {}).items()}
            # The SDK's typed options, from the JSON the test sends.
            if "tags_filter" in kwargs:
                kwargs["tags_filter"] = FilterNode(kwargs["tags_filter"])
            if "delta" in kwargs:
                kwargs["delta"] = DeltaType(kwargs["delta"])
            subs[channel] = client.new_subscription(channel, events=SubEvents(channel), **kwargs)
        return subs[channel]

    async def run(cmd):
        op = cmd["op"]
        if op == "connect":
            await client.connect()
        elif op == "disconnect":
            await client.disconnect()
        elif op == "subscribe":
            await sub(cmd["channel"], cmd.get("options")).subscribe()
        elif op == "unsubscribe":
            await sub(cmd["channel"]).unsubscribe()
        elif op == "publish":
            await sub(cmd["channel"]).publish(payload(cmd))
        elif op == "rpc":
            r = await client.rpc(cmd["method"], payload(cmd))
            return seen(r.data)
        elif op == "presence":
            r = await sub(cmd["channel"]).presence()
            return {"clients": {k: {"client": v.client, "user": v.user} for k, v in r.clients.items()}}
        elif op == "presence_stats":
            r = await sub(cmd["channel"]).presence_stats()
            return {"numClients": r.num_clients, "numUsers": r.num_users}
        elif op == "history":
            o = cmd.get("options", {})
            since = StreamPosition(**o["since"]) if o.get("since") else None
            r = await sub(cmd["channel"]).history(limit=o.get("limit", 0), since=since, reverse=o.get("reverse", False))
            return {"epoch": r.epoch, "offset": r.offset,
                    "publications": [{"offset": p.offset, **seen(p.data)} for p in r.publications]}
        elif op == "quit":
            await client.disconnect()
            sys.exit(0)
        else:
            raise ValueError(f"unknown op {op}")
        return None

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out("ready")
    while True:
        line = await reader.readline()
        if not line:
            await client.disconnect()
            return
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            out("result", op=cmd["op"], result=await run(cmd))
        except centrifuge.CentrifugeError as e:
            out("op_error", op=cmd["op"], code=getattr(e, "code", None), message=str(e))


try:
    asyncio.run(main())
except SystemExit:
    raise
except BaseException as e:  # report anything unexpected to the test
    out("fail", error=repr(e))
    sys.exit(1)
