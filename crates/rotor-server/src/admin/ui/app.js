// rotor admin UI. Plain JavaScript served by rotor itself (no build step, nothing loaded
// from elsewhere). Every action is a server API method called through the admin session
// (POST admin/api/<method>); text from the server is only ever set as text, never as HTML.
'use strict';

const base = location.pathname.replace(/[^/]*$/, '');
const state = { csrf: '', page: '', gen: 0, timer: null, ticker: null, channel: '' };
const $ = (id) => document.getElementById(id);

// --- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) e.append(c);
  return e;
}

function flash(text, bad) {
  const f = $('flash');
  f.textContent = text;
  f.classList.toggle('bad', !!bad);
  f.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { f.hidden = true; }, 6000);
}

// --- Time ----------------------------------------------------------------------------------

const nowSec = () => Math.floor(Date.now() / 1000);

function span(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function when(unix) {
  if (!unix) return '—';
  const d = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fromLocalInput(value) {
  if (!value) return undefined;
  const t = new Date(value).getTime();
  return Number.isFinite(t) ? Math.floor(t / 1000) : undefined;
}

// --- Server calls ------------------------------------------------------------------------

class SignedOut extends Error {}

async function request(path, init, retried) {
  const headers = Object.assign({ 'x-rotor-csrf': state.csrf }, (init && init.headers) || {});
  const res = await fetch(base + path, Object.assign({ credentials: 'same-origin' }, init, { headers }));
  if (res.status === 401) {
    // The session may still be good on a node that has another CSRF token (admin.insecure
    // behind a load balancer, or a restart): ask once, then sign in again.
    const s = retried ? {} : await readSession().catch(() => ({}));
    if (!s.signed_in) { showSignIn(); throw new SignedOut('signed out'); }
    state.csrf = s.csrf;
    return request(path, init, true);
  }
  let body = {};
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error(typeof body.error === 'string' ? body.error : `HTTP ${res.status}`);
  return body;
}

async function api(method, params) {
  const body = await request(`admin/api/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(params || {}),
  });
  if (body.error) throw new Error(`${body.error.message} (${body.error.code})`);
  return body.result;
}

function failed(e) {
  if (!(e instanceof SignedOut)) flash(e.message || String(e), true);
}

// --- Sign-in -------------------------------------------------------------------------------

async function readSession() {
  return (await fetch(base + 'admin/session', { credentials: 'same-origin' })).json();
}

function showSignIn(message) {
  stopPolling();
  state.csrf = '';
  $('app').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('password').value = '';
  $('password').focus();
}

function showApp(session) {
  state.csrf = session.csrf;
  $('node-name').textContent = session.node ? `node ${session.node}` : '';
  $('signout').hidden = !!session.insecure;
  $('signin').hidden = true;
  $('app').hidden = false;
  route();
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('signin-error').hidden = true;
  let res;
  try {
    res = await fetch(base + 'admin/auth', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ password: $('password').value }),
    });
  } catch (e) {
    return showSignIn('The server cannot be reached.');
  }
  if (res.status === 200) {
    const s = await readSession().catch(() => ({}));
    if (s.signed_in) return showApp(s);
    return showSignIn('Signed in, but the session was not kept: are cookies allowed for this site?');
  }
  if (res.status === 401) return showSignIn('Wrong password.');
  if (res.status === 429) {
    const wait = res.headers.get('retry-after');
    return showSignIn(`Too many failed attempts. Try again in ${wait || 60} s.`);
  }
  const body = await res.json().catch(() => ({}));
  showSignIn(`Sign-in failed: ${typeof body.error === 'string' ? body.error : `HTTP ${res.status}`}`);
});

$('signout').addEventListener('click', async () => {
  try { await request('admin/logout', { method: 'POST' }); } catch (_) { /* signed out anyway */ }
  showSignIn();
});

// --- Pages ---------------------------------------------------------------------------------

const pages = {
  overview: { load: loadOverview, every: 2000 },
  connections: { load: loadConnections, every: 1000, tick: tickExpiries },
  lifecycle: { load: loadLifecycle, every: 2000 },
  revocations: { load: loadRevocations },
  channels: { load: loadChannels, every: 3000 },
};

// Each page load has a generation: a change of page (or a sign-out) starts a new one, and
// an answer that arrives for an older generation is dropped instead of drawn.
function stopPolling() {
  state.gen += 1;
  clearTimeout(state.timer);
  clearInterval(state.ticker);
  state.timer = state.ticker = null;
}

const current = (gen) => gen === undefined || gen === state.gen;

function route() {
  if ($('app').hidden) return;
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const page = pages[name] ? name : 'overview';
  state.page = page;
  stopPolling();
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== `page-${page}`;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  const p = pages[page];
  const gen = state.gen;
  // The next poll starts only when this one is done, so slow answers never pile up.
  const run = async () => {
    await p.load(gen).catch(failed);
    if (p.every && gen === state.gen) state.timer = setTimeout(run, p.every);
  };
  run();
  if (p.tick) state.ticker = setInterval(p.tick, 1000);
}

window.addEventListener('hashchange', route);

function stat(label, value, id) {
  return el('div', { class: 'stat', id }, el('div', { class: 'value', text: value }), el('div', { class: 'label', text: label }));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// Overview: every node's numbers, connections by transport.
async function loadOverview(gen) {
  const [info, conns] = await Promise.all([api('info'), api('connections', { limit: 0 })]);
  if (!current(gen)) return;
  const nodes = info.nodes || [];
  const sum = (k) => nodes.reduce((a, n) => a + (n[k] || 0), 0);
  const uptime = nodes.length ? Math.max(...nodes.map((n) => n.uptime || 0)) : 0;
  $('ov-cards').replaceChildren(
    stat('Nodes', nodes.length),
    stat('Connections', sum('num_clients'), 'ov-connections'),
    stat('Users', sum('num_users')),
    stat('Subscriptions', sum('num_subs')),
    stat('Channels', sum('num_channels')),
    stat('Uptime (longest)', span(uptime)),
  );
  fill($('ov-nodes').tBodies[0], nodes.map((n) => el('tr', {},
    el('td', { text: n.name }), el('td', { class: 'num', text: n.num_clients }),
    el('td', { class: 'num', text: n.num_users }), el('td', { class: 'num', text: n.num_subs }),
    el('td', { class: 'num', text: n.num_channels }), el('td', { text: span(n.uptime || 0) }),
    el('td', { text: n.version }))));
  const by = Object.entries(conns.by_transport || {}).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...by.map(([, n]) => n));
  $('ov-transports').replaceChildren(by.length
    ? el('div', { class: 'bars' }, by.map(([t, n]) => {
      const bar = el('div', { class: 'fill' });
      bar.style.width = `${(100 * n) / max}%`;
      return el('div', { class: 'bar', 'data-transport': t },
        el('span', { text: t }), el('div', { class: 'track' }, bar), el('span', { class: 'num', text: n }));
    }))
    : el('p', { class: 'muted', text: 'No connections.' }));
}

// Connections: live list, countdown to expiry, disconnect and revoke from the row.
async function loadConnections(gen) {
  const params = { limit: 500 };
  const user = $('conn-user').value.trim();
  const channel = $('conn-channel').value.trim();
  if (user) params.user = user;
  if (channel) params.channel = channel;
  const res = await api('connections', params);
  if (!current(gen)) return;
  const list = Object.entries(res.connections || {}).map(([client, c]) => Object.assign({ client }, c));
  list.sort((a, b) => a.connected_at_ms - b.connected_at_ms || a.client.localeCompare(b.client));
  $('conn-count').textContent = list.length < res.total ? `showing ${list.length} of ${res.total}` : `${res.total} connection${res.total === 1 ? '' : 's'}`;
  $('conn-empty').hidden = list.length > 0;
  // A row whose connection did not change is kept as it is (a click on it is not lost).
  const tbody = $('conn-table').tBodies[0];
  const kept = new Map([...tbody.rows].map((tr) => [tr.dataset.sig, tr]));
  fill(tbody, list.map((c) => {
    const sig = JSON.stringify(c);
    const tr = kept.get(sig) || connectionRow(c);
    tr.dataset.sig = sig;
    return tr;
  }));
}

function connectionRow(c) {
  const token = (c.state && c.state.connection_token) || {};
  const channels = Object.keys((c.state && c.state.channels) || {});
  const td = (label, ...content) => el('td', { 'data-label': label }, ...content);
  return el('tr', { 'data-client': c.client, 'data-user': c.user },
    td('User', c.user || el('span', { class: 'muted', text: '(anonymous)' })),
    td('Client', el('code', { text: c.client })),
    td('Transport', el('span', { class: 'transport', text: c.transport })),
    td('Protocol', c.protocol),
    td('Remote address', c.remote_addr || '—'),
    td('Connected', el('span', { title: when(c.connected_at_ms / 1000), text: `${span(nowSec() - c.connected_at_ms / 1000)} ago` })),
    td('Expires', el('span', { class: `expires ${expiryClass(c.expire_at)}`, 'data-expire-at': c.expire_at || 0 }, expiryText(c.expire_at))),
    td('Token jti', token.uid ? el('code', { class: 'jti', text: token.uid }) : el('span', { class: 'muted', text: '—' })),
    td('Subscriptions', channels.length ? channels.map((ch) => el('span', { class: 'tag', text: ch })) : el('span', { class: 'muted', text: 'none' })),
    td('', el('div', { class: 'actions' },
      el('button', { class: 'small', type: 'button', disabled: !c.user, title: c.user ? 'Close this connection' : 'An anonymous connection ends when its token is revoked or expires',
        onclick: () => disconnect(c) }, 'Disconnect'),
      el('button', { class: 'small danger', type: 'button', disabled: !token.uid, title: token.uid ? 'Revoke this token' : 'The token has no jti',
        onclick: () => openRevoke(c, token.uid) }, 'Revoke token'))));
}

function expiryText(at) {
  if (!at) return 'never';
  const left = at - nowSec();
  return left >= 0 ? `in ${span(left)} (${when(at).slice(11)})` : `${span(left)} ago — closing`;
}

function expiryClass(at) {
  if (!at) return '';
  const left = at - nowSec();
  if (left < 0) return 'past';
  return left < 60 ? 'soon' : '';
}

function tickExpiries() {
  for (const e of document.querySelectorAll('#conn-table .expires')) {
    const at = Number(e.dataset.expireAt);
    e.textContent = expiryText(at);
    e.className = `expires ${expiryClass(at)}`;
  }
}

async function disconnect(c) {
  try {
    await api('disconnect', { user: c.user, client: c.client });
    flash(`Disconnected client ${c.client}.`);
    await loadConnections();
  } catch (e) { failed(e); }
}

let revoking = null;
function openRevoke(c, jti) {
  revoking = { c, jti };
  $('rd-jti').textContent = jti;
  $('rd-user').textContent = c.user || '(anonymous)';
  $('rd-reason').value = '';
  $('revoke-dialog').showModal();
}
$('rd-cancel').addEventListener('click', () => $('revoke-dialog').close());
$('revoke-dialog-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const { c, jti } = revoking || {};
  const reason = $('rd-reason').value.trim();
  if (!jti || !reason) return;
  $('revoke-dialog').close();
  try {
    await api('revoke_token', { uid: jti, user: c.user, expire_at: c.expire_at || 0, reason });
    flash(`Token ${jti} revoked; its connections are closed.`);
    await loadConnections();
  } catch (e) { failed(e); }
});
$('conn-filter').addEventListener('submit', (ev) => { ev.preventDefault(); loadConnections().catch(failed); });
$('conn-filter').addEventListener('reset', () => setTimeout(() => loadConnections().catch(failed)));

// Token lifecycle: what expires soon, refreshes and 3005 closes per minute.
const OUTCOMES = { ok: '#2e9e5b', expired: '#d98a1c', invalid: '#c0392b', mismatch: '#8e44ad', empty: '#7f8c8d', unavailable: '#2980b9', revoked: '#1d2330' };

async function loadLifecycle(gen) {
  const lc = await request('admin/lifecycle');
  if (!current(gen)) return;
  const e = lc.expiring || {};
  $('lc-cards').replaceChildren(
    stat('Expiring in the next minute', e['1m'] ?? 0, 'lc-1m'),
    stat('… in 5 minutes', e['5m'] ?? 0, 'lc-5m'),
    stat('… in an hour', e['1h'] ?? 0, 'lc-1h'),
    stat('Connections with expiry', `${lc.with_expiry} / ${lc.connections}`),
  );
  $('lc-node').textContent = `(node ${lc.node})`;
  const minutes = lc.minutes || [];
  const outcomes = Object.keys(OUTCOMES).filter((o) => minutes.some((m) => m.refreshes[o]));
  const width = $('lc-refreshes').clientWidth;
  $('lc-refreshes').replaceChildren(barChart('refreshes', minutes, outcomes.map((o) => ({ name: o, color: OUTCOMES[o], value: (m) => m.refreshes[o] || 0 })), width));
  $('lc-legend').replaceChildren(...(outcomes.length ? outcomes : ['ok']).map((o) => {
    const i = el('i');
    i.style.background = OUTCOMES[o];
    return el('span', {}, i, o);
  }));
  $('lc-expired').replaceChildren(barChart('expired', minutes, [{ name: '3005', color: '#c0392b', value: (m) => m.expired }], width));
}

// A stacked bar chart, one bar a minute; `data-total` is the sum of everything drawn.
function barChart(name, minutes, series, width) {
  const W = Math.max(320, Math.round(width || 720)), H = 180, left = 32, bottom = 18, top = 8;
  const totals = minutes.map((m) => series.reduce((a, s) => a + s.value(m), 0));
  const max = Math.max(1, ...totals);
  const bw = (W - left) / Math.max(1, minutes.length);
  const y = (v) => H - bottom - ((H - bottom - top) * v) / max;
  const bars = [];
  minutes.forEach((m, i) => {
    let acc = 0;
    for (const s of series) {
      const v = s.value(m);
      if (!v) continue;
      const r = svg('rect', { x: left + i * bw + 1, y: y(acc + v), width: Math.max(1, bw - 2), height: y(acc) - y(acc + v), fill: s.color });
      r.append(svg('title', {}, document.createTextNode(`${when(m.at).slice(11, 16)} ${s.name}: ${v}`)));
      bars.push(r);
      acc += v;
    }
  });
  const total = totals.reduce((a, b) => a + b, 0);
  const label = (x, yy, text, anchor) => {
    const t = svg('text', { x, y: yy, 'text-anchor': anchor || 'start' });
    t.textContent = text;
    return t;
  };
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-chart': name, 'data-total': total,
    'aria-label': `${name}: ${total} in the last hour` },
  svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
  label(left - 4, top + 8, String(max), 'end'), label(left - 4, H - bottom, '0', 'end'),
  label(left, H - 4, '60 min ago'), label(W, H - 4, 'now', 'end'), bars);
}

// Revocations: the audit trail with search, and the forms.
async function loadRevocations(gen) {
  const params = { limit: 200 };
  const user = $('rev-user').value.trim();
  const jti = $('rev-jti').value.trim();
  if (user) params.user = user;
  if (jti) params.jti = jti;
  const since = fromLocalInput($('rev-since').value);
  const until = fromLocalInput($('rev-until').value);
  if (since) params.since = since;
  if (until) params.until = until;
  const res = await api('revoked_tokens', params);
  if (!current(gen)) return;
  const rows = res.tokens || [];
  $('rev-empty').hidden = rows.length > 0;
  const td = (label, ...content) => el('td', { 'data-label': label }, ...content);
  fill($('rev-table').tBodies[0], rows.map((r) => el('tr', { 'data-jti': r.jti },
    td('Token jti', el('code', { text: r.jti })), td('User', r.user || '—'),
    td('Revoked at', when(r.revoked_at)), td('Token expiry', r.expire_at ? when(r.expire_at) : 'kept'),
    td('Reason', el('span', { class: 'reason', text: r.reason || '—' })), td('Actor', el('span', { class: 'actor', text: r.actor })),
    td('Connections closed', String(r.kicked)))));
}
$('rev-search').addEventListener('submit', (ev) => { ev.preventDefault(); loadRevocations().catch(failed); });
$('rev-search').addEventListener('reset', () => setTimeout(() => loadRevocations().catch(failed)));
$('rev-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const jti = $('rf-jti').value.trim();
  try {
    await api('revoke_token', { uid: jti, user: $('rf-user').value.trim(), expire_at: fromLocalInput($('rf-exp').value) || 0, reason: $('rf-reason').value.trim() });
    flash(`Token ${jti} revoked.`);
    ev.target.reset();
    await loadRevocations();
  } catch (e) { failed(e); }
});
$('inv-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const user = $('if-user').value.trim();
  try {
    await api('invalidate_user_tokens', { user, reason: $('if-reason').value.trim() });
    flash(`Tokens of user ${user} issued until now are invalidated.`);
    ev.target.reset();
  } catch (e) { failed(e); }
});

// Channels: subscriber counts, a channel's presence and history, publish.
async function loadChannels(gen) {
  const res = await api('channels', { pattern: $('ch-pattern').value.trim() });
  if (!current(gen)) return;
  const list = Object.entries(res.channels || {}).sort((a, b) => b[1].num_clients - a[1].num_clients || a[0].localeCompare(b[0]));
  $('ch-count').textContent = `${list.length} channel${list.length === 1 ? '' : 's'}`;
  $('ch-empty').hidden = list.length > 0;
  fill($('ch-table').tBodies[0], list.map(([name, c]) => el('tr', { class: `clickable${name === state.channel ? ' selected' : ''}`, 'data-channel': name,
    onclick: () => { state.channel = name; loadChannels().catch(failed); } },
  el('td', { text: name }), el('td', { class: 'num', text: c.num_clients }))));
  if (state.channel) await loadChannel(state.channel);
}

async function loadChannel(name) {
  $('ch-detail').hidden = false;
  $('ch-name').textContent = name;
  const settle = (p) => p.then((v) => ({ v }), (e) => ({ e }));
  const [stats, presence, history] = await Promise.all([
    settle(api('presence_stats', { channel: name })), settle(api('presence', { channel: name })),
    settle(api('history', { channel: name, limit: 20, reverse: true }))]);
  $('ch-stats').textContent = stats.v ? `${stats.v.num_clients} clients, ${stats.v.num_users} users in presence` : `presence: ${stats.e.message}`;
  $('ch-presence').replaceChildren(...(presence.v
    ? Object.values(presence.v.presence || {}).map((p) => el('li', {}, el('strong', { text: p.user || '(anonymous)' }), ' ', el('code', { text: p.client })))
    : [el('li', { class: 'muted', text: presence.e.message })]));
  $('ch-history').replaceChildren(...(history.v
    ? (history.v.publications || []).map((p) => el('li', {}, el('span', { class: 'muted', text: `#${p.offset || '-'} ` }), JSON.stringify(p.data)))
    : [el('li', { class: 'muted', text: history.e.message })]));
}

$('ch-filter').addEventListener('submit', (ev) => { ev.preventDefault(); loadChannels().catch(failed); });
$('pub-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  let data;
  try { data = JSON.parse($('pub-data').value); } catch (e) { return flash(`Data is not JSON: ${e.message}`, true); }
  try {
    const res = await api('publish', { channel: state.channel, data });
    flash(`Published to ${state.channel}${res.offset ? ` at offset ${res.offset}` : ''}.`);
    await loadChannel(state.channel);
  } catch (e) { failed(e); }
});

// --- Start ---------------------------------------------------------------------------------

(async () => {
  try {
    const s = await readSession();
    if (s.signed_in) showApp(s); else showSignIn();
  } catch (e) {
    showSignIn('The server cannot be reached.');
  }
})();
