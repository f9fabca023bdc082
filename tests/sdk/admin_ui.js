// Drives rotor's admin web UI in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core: no browser download) from JSON commands on stdin, and reports each
// outcome as one JSON line on stdout (`result` with the command's `op`, or `op_error`), as
// client.js does for centrifuge-js. Used by tests/tests/e2e/admin.rs.
//
// Environment: ADMIN_URL (the UI's page, e.g. http://127.0.0.1:8000/), CHROMIUM (the
// browser; default /usr/bin/chromium), SHOTS (a folder for screenshots; none without it).
'use strict';
const { chromium } = require('playwright-core');
const readline = require('readline');
const path = require('path');

const out = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');
const fail = (error) => { out('fail', { error: String((error && error.stack) || error) }); process.exit(1); };
process.on('unhandledRejection', fail);

const url = process.env.ADMIN_URL;
let browser;
let page;

async function go(name) {
  await page.evaluate((n) => { location.hash = `#/${n}`; }, name);
  await page.waitForSelector(`#page-${name}:not([hidden])`);
}

const ops = {
  // Opens the page at a width (1280 unless told), fresh cookies.
  async open(cmd) {
    browser = browser || await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    const context = await browser.newContext({ viewport: { width: cmd.width || 1280, height: cmd.height || 860 } });
    page = await context.newPage();
    page.on('pageerror', (e) => out('page_error', { error: String(e) }));
    await page.goto(url);
    await page.waitForSelector('#signin:not([hidden]), #app:not([hidden])');
    return { signin: await page.isVisible('#signin'), app: await page.isVisible('#app') };
  },
  async sign_in(cmd) {
    await page.fill('#password', cmd.password);
    await page.click('#signin-form button[type=submit]');
    await page.waitForFunction(() => !document.getElementById('app').hidden
      || !document.getElementById('signin-error').hidden);
    const error = await page.isVisible('#signin-error') ? await page.textContent('#signin-error') : '';
    // What a refused visitor can see of the admin's data: nothing.
    const leaked = await page.evaluate(() => document.querySelectorAll('#app:not([hidden]) tbody tr').length);
    return { app: await page.isVisible('#app'), error, leaked };
  },
  // The refreshes chart's total (sum of its bars), once drawn.
  async chart(cmd) {
    await go('lifecycle');
    const sel = `#page-lifecycle svg[data-chart="${cmd.name}"]`;
    await page.waitForSelector(sel);
    if (cmd.above !== undefined) {
      await page.waitForFunction(([s, above]) => Number(document.querySelector(s).dataset.total) > above,
        [sel, cmd.above], { timeout: cmd.timeout || 15000 });
    }
    const total = Number(await page.getAttribute(sel, 'data-total'));
    const bars = await page.locator(`${sel} rect`).count();
    const expiring = await page.textContent('#lc-1h .value');
    return { total, bars, expiring: Number(expiring) };
  },
  // The connections page's row of a user, once listed.
  async row(cmd) {
    await go('connections');
    const sel = `#conn-table tr[data-user="${cmd.user}"]`;
    await page.waitForSelector(sel, { timeout: cmd.timeout || 10000 });
    const row = page.locator(sel).first();
    const text = async (s) => (await row.locator(s).first().textContent()).trim();
    return {
      client: await row.getAttribute('data-client'),
      transport: await text('.transport'),
      protocol: (await row.locator('td[data-label="Protocol"]').textContent()).trim(),
      expires: await text('.expires'),
      expire_at: Number(await row.locator('.expires').getAttribute('data-expire-at')),
      jti: await row.locator('.jti').count() ? await text('.jti') : null,
      subscriptions: await row.locator('.tag').allTextContents(),
    };
  },
  // Revokes the token of a row's connection with a reason; how long until the row is gone.
  async revoke(cmd) {
    await go('connections');
    const sel = `#conn-table tr[data-client="${cmd.client}"]`;
    await page.click(`${sel} button.danger`);
    await page.fill('#rd-reason', cmd.reason);
    const started = Date.now();
    await page.click('#revoke-dialog-form button[type=submit]');
    await page.waitForSelector(sel, { state: 'detached', timeout: cmd.timeout || 5000 });
    return { gone_after_ms: Date.now() - started, flash: await page.textContent('#flash') };
  },
  // The audit trail's row of a jti, searched for on the revocations page.
  async audit(cmd) {
    await go('revocations');
    await page.fill('#rev-jti', cmd.jti);
    await page.click('#rev-search button[type=submit]');
    const sel = `#rev-table tr[data-jti="${cmd.jti}"]`;
    await page.waitForSelector(sel);
    const rows = await page.locator('#rev-table tbody tr').count();
    const row = page.locator(sel);
    return {
      rows,
      reason: (await row.locator('.reason').textContent()).trim(),
      actor: (await row.locator('.actor').textContent()).trim(),
      kicked: Number((await row.locator('td[data-label="Connections closed"]').textContent()).trim()),
    };
  },
  // Publishes from the channels page to a channel listed there.
  async publish(cmd) {
    await go('channels');
    const sel = `#ch-table tr[data-channel="${cmd.channel}"]`;
    await page.waitForSelector(sel);
    await page.click(sel);
    await page.waitForSelector('#ch-detail:not([hidden])');
    await page.fill('#pub-data', JSON.stringify(cmd.data));
    await page.click('#pub-form button[type=submit]');
    await page.waitForSelector('#flash:not([hidden])');
    await page.waitForSelector('#ch-history li');
    return { flash: await page.textContent('#flash'), history: await page.locator('#ch-history li').allTextContents() };
  },
  // Overview numbers as shown.
  async overview(cmd) {
    await go('overview');
    await page.waitForSelector('#ov-connections');
    if (cmd.connections !== undefined) {
      // The page polls: wait for the number the test expects (an earlier render may show less).
      await page.waitForFunction((n) => document.querySelector('#ov-connections .value').textContent === String(n),
        cmd.connections, { timeout: 10000 });
    }
    await page.waitForFunction(() => document.querySelectorAll('#ov-nodes tbody tr').length > 0);
    const transports = await page.locator('#ov-transports .bar').evaluateAll((bars) => bars.map((b) => b.dataset.transport));
    return { connections: Number(await page.textContent('#ov-connections .value')), transports };
  },
  async screenshot(cmd) {
    if (!process.env.SHOTS) return { skipped: true };
    if (cmd.page) await go(cmd.page);
    await page.waitForTimeout(cmd.settle || 300);
    const file = path.join(process.env.SHOTS, cmd.file);
    await page.screenshot({ path: file, fullPage: true });
    return { file };
  },
  async quit() {
    if (browser) await browser.close();
    process.exit(0);
  },
};

// One command at a time, in the order they came.
let queue = Promise.resolve();
const run = async (cmd) => {
  try {
    const result = await ops[cmd.op](cmd);
    out('result', { op: cmd.op, result: result === undefined ? null : result });
  } catch (e) {
    out('op_error', { op: cmd.op, message: (e && e.message) || String(e) });
  }
};
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { return; }
  queue = queue.then(() => run(cmd));
});
rl.on('close', () => { queue = queue.then(() => ops.quit()); });
out('ready');
