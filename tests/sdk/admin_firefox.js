// The admin UI in Firefox: Debian's firefox-esr driven by puppeteer-core over WebDriver
// BiDi (playwright-core drives only its own patched Firefox build, which cannot be
// downloaded here). One pass at each width: refused and accepted sign-in, a user's row on
// the connections page, the lifecycle chart drawn, a revocation from the row; one JSON line
// per step on stdout. Used by tests/tests/e2e/admin.rs.
//
// Environment: ADMIN_URL, PASSWORD, USER (whose connection to find and revoke at the
// last width), WIDTHS (comma-separated, default 1280,390), FIREFOX (default
// /usr/bin/firefox-esr), SHOTS (a folder for screenshots; none without it).
'use strict';
const puppeteer = require('puppeteer-core');
const path = require('path');

const out = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');
const fail = (error) => { out('fail', { error: String((error && error.stack) || error) }); process.exit(1); };
process.on('unhandledRejection', fail);

const env = process.env;
const widths = (env.WIDTHS || '1280,390').split(',').map(Number);

async function visible(page, sel) {
  return page.$eval(sel, (e) => !e.closest('[hidden]') && e.getClientRects().length > 0).catch(() => false);
}

async function go(page, name) {
  await page.evaluate((n) => { location.hash = `#/${n}`; }, name);
  await page.waitForSelector(`#page-${name}:not([hidden])`);
}

(async () => {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    timeout: 60000,
  });
  out('ready', { version: await browser.version() });
  for (const [i, width] of widths.entries()) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    await page.setViewport({ width, height: 860 });
    page.on('pageerror', (e) => out('page_error', { error: String(e) }));
    await page.goto(env.ADMIN_URL);
    await page.waitForSelector('#signin:not([hidden])');

    await page.type('#password', 'not the password');
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#signin-error:not([hidden])');
    const error = await page.$eval('#signin-error', (e) => e.textContent);
    const app = await visible(page, '#app');
    out('refused', { width, error, app });

    await page.$eval('#password', (e) => { e.value = ''; });
    await page.type('#password', env.PASSWORD);
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#app:not([hidden])');

    await go(page, 'connections');
    const row = `#conn-table tr[data-user="${env.USER}"]`;
    await page.waitForSelector(row);
    const found = await page.$eval(row, (tr) => ({
      transport: tr.querySelector('.transport').textContent,
      expires: tr.querySelector('.expires').textContent,
      jti: (tr.querySelector('.jti') || {}).textContent || null,
      // Laid out as cards at phone width: the header row is not shown.
      header_shown: document.querySelector('#conn-table thead').getClientRects().length > 0,
      // Nothing wider than the screen.
      overflow: document.documentElement.scrollWidth > window.innerWidth,
    }));
    out('row', { width, ...found });
    if (env.SHOTS) await page.screenshot({ path: path.join(env.SHOTS, `firefox-${width}-connections.png`), fullPage: true });

    await go(page, 'lifecycle');
    await page.waitForSelector('#lc-refreshes svg[data-chart="refreshes"]');
    const total = await page.$eval('#lc-refreshes svg', (s) => Number(s.dataset.total));
    out('chart', { width, total });

    if (i === widths.length - 1) {
      await go(page, 'connections');
      await page.click(`${row} button.danger`);
      await page.waitForSelector('#revoke-dialog[open]');
      await page.type('#rd-reason', 'revoked from firefox');
      await page.click('#revoke-dialog-form button[type=submit]');
      const started = Date.now();
      await page.waitForSelector(row, { hidden: true, timeout: 5000 });
      out('revoked', { width, gone_after_ms: Date.now() - started });
    }
    await context.close();
  }
  await browser.close();
  out('done');
})().catch(fail);
