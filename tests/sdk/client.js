// Drives the official centrifuge-js client from JSON commands on stdin and reports every
// event as one JSON line on stdout. Used by rotor's end-to-end tests; see tests/src/lib.rs.
//
// Environment: BASE (http://host:port), TRANSPORT (websocket | http_stream | sse),
// TOKEN (initial connection token), GET_TOKEN=1 (ask the test for tokens through stdin),
// EMULATION_BASE (where emulation POSTs go; default BASE), PROTOBUF=1 (the SDK's Protobuf
// build: payloads go out as bytes and are reported as `data` when they are JSON text, and
// always as `data_b64`), COOKIE (a Cookie header on the WebSocket upgrade, as a browser
// sends its cookies), HEADERS (JSON: the SDK's `headers` option, sent in the connect command).
'use strict';
const protobuf = process.env.PROTOBUF === '1';
const { Centrifuge, UnauthorizedError } = require(protobuf ? 'centrifuge/build/protobuf' : 'centrifuge');
const WebSocket = require('ws');
const { EventSource } = require('eventsource');
const readline = require('readline');

const out = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');

// A payload the test gave: JSON, or bytes in base64 (`b64`); the Protobuf build sends bytes.
const payload = (cmd) => {
  if (!protobuf) return cmd.data;
  if (cmd.b64 !== undefined) return new Uint8Array(Buffer.from(cmd.b64, 'base64'));
  return new TextEncoder().encode(JSON.stringify(cmd.data));
};
// A payload the SDK handed over, as the test reads it.
const seen = (data) => {
  if (!protobuf || !(data instanceof Uint8Array)) return { data };
  const b64 = Buffer.from(data).toString('base64');
  try {
    return { data: JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data)), data_b64: b64 };
  } catch (e) {
    return { data: null, data_b64: b64 };
  }
};
const seenPubs = (r) => (r && r.publications
  ? { ...r, publications: r.publications.map((p) => ({ ...p, ...seen(p.data) })) }
  : r);
const fail = (error) => { out('fail', { error: String((error && error.stack) || error) }); process.exit(1); };
process.on('unhandledRejection', fail);

const env = process.env;
const base = env.BASE;
const transport = env.TRANSPORT || 'websocket';
const wsBase = base.replace(/^http/, 'ws');
const endpoints = {
  websocket: `${wsBase}/connection/websocket`,
  http_stream: `${base}/connection/http_stream`,
  sse: `${base}/connection/sse`,
};

// Tokens requested by getToken are answered by {"op":"token"} commands; one answer settles
// every request still waiting (requests made for an attempt the SDK abandoned are ignored
// by the SDK itself).
const tokenWaiters = [];
const askToken = (what) => new Promise((resolve, reject) => {
  tokenWaiters.push({ resolve, reject });
  out('get_token', what);
});

// A browser sends its cookies with the upgrade request; Node's `ws` does when told to.
class CookieWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { headers: { Cookie: env.COOKIE } });
  }
}

const options = {
  websocket: env.COOKIE ? CookieWebSocket : WebSocket,
  eventsource: EventSource,
  emulationEndpoint: `${env.EMULATION_BASE || base}/emulation`,
  token: env.TOKEN || '',
  minReconnectDelay: 100,
  maxReconnectDelay: 500,
  timeout: 5000,
};
if (env.GET_TOKEN === '1') options.getToken = () => askToken({});
if (env.HEADERS) options.headers = JSON.parse(env.HEADERS);

const client = new Centrifuge([{ transport, endpoint: endpoints[transport] }], options);
client.on('connecting', (ctx) => out('connecting', { code: ctx.code, reason: ctx.reason }));
client.on('connected', (ctx) => out('connected', { client: ctx.client, transport: ctx.transport, ...seen(ctx.data) }));
client.on('disconnected', (ctx) => out('disconnected', { code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => out('error', { type: ctx.type, error: ctx.error }));
client.on('publication', (ctx) => out('server_publication', { channel: ctx.channel, ...seen(ctx.data), offset: ctx.offset }));
client.on('subscribed', (ctx) => out('server_subscribed', { channel: ctx.channel, recovered: ctx.recovered }));
client.on('message', (ctx) => out('message', seen(ctx.data)));

const subs = {};
function subscription(channel, opts = {}) {
  if (subs[channel]) return subs[channel];
  const subOpts = { ...opts };
  if (opts.getToken) subOpts.getToken = (ctx) => askToken({ channel: ctx.channel });
  const sub = client.newSubscription(channel, subOpts);
  sub.on('subscribing', (ctx) => out('subscribing', { channel, code: ctx.code, reason: ctx.reason }));
  sub.on('subscribed', (ctx) => out('subscribed', {
    channel, recoverable: ctx.recoverable, positioned: ctx.positioned, wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered, streamPosition: ctx.streamPosition, ...seen(ctx.data),
  }));
  sub.on('unsubscribed', (ctx) => out('unsubscribed', { channel, code: ctx.code, reason: ctx.reason }));
  sub.on('publication', (ctx) => out('publication', {
    channel, ...seen(ctx.data), offset: ctx.offset, info: ctx.info && { ...ctx.info, connInfo: seen(ctx.info.connInfo).data },
  }));
  sub.on('join', (ctx) => out('join', { channel, info: ctx.info }));
  sub.on('leave', (ctx) => out('leave', { channel, info: ctx.info }));
  sub.on('error', (ctx) => out('sub_error', { channel, type: ctx.type, error: ctx.error }));
  subs[channel] = sub;
  return sub;
}

async function run(op, cmd) {
  const sub = () => subscription(cmd.channel);
  switch (op) {
    case 'connect': client.connect(); return undefined;
    case 'disconnect': client.disconnect(); return undefined;
    case 'subscribe': subscription(cmd.channel, cmd.options || {}).subscribe(); return undefined;
    case 'unsubscribe': sub().unsubscribe(); return undefined;
    case 'publish': return sub().publish(payload(cmd));
    case 'client_publish': return client.publish(cmd.channel, payload(cmd));
    case 'presence': return sub().presence();
    case 'presence_stats': return sub().presenceStats();
    case 'history': return seenPubs(await sub().history(cmd.options || {}));
    case 'delta_stats': return sub().deltaStats();
    case 'rpc': return seen((await client.rpc(cmd.method, payload(cmd))).data);
    case 'send': return client.send(payload(cmd));
    case 'quit': process.exit(0); return undefined;
    default: throw new Error(`unknown op ${op}`);
  }
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.op === 'token') {
    if (tokenWaiters.length === 0) return fail('token given but none asked for');
    for (const waiter of tokenWaiters.splice(0)) {
      if (cmd.unauthorized) waiter.reject(new UnauthorizedError('refused by test'));
      else waiter.resolve(cmd.token);
    }
    return;
  }
  try {
    const result = await run(cmd.op, cmd);
    out('result', { op: cmd.op, result: result === undefined ? null : result });
  } catch (e) {
    out('op_error', { op: cmd.op, code: e && e.code, message: (e && e.message) || String(e) });
  }
}).on('close', () => process.exit(0));

out('ready');
