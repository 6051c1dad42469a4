// Drives wasmgate's admin page in headless Chromium (Debian's, through playwright-core), as an
// operator would. Started by tests/tests/e2e/admin.rs, which serves the page over a cluster of
// two gateways and two worker hosts; every wait is for something on the page, bounded by
// TIMEOUT_MS.
//
//   node tests/browser/admin.cjs <page url> <screenshot dir> <ada id> <bob id> <bystander id> <uid>
//
// The page shows both gateways and every client; the plugin table shows a trap (the test made
// one); a search for <uid> finds Ada with her session; her Kick button removes her from the
// client list (the test then checks that her socket closed).
//
// Environment: NODE_PATH (where playwright-core is installed), CHROMIUM (the browser binary).
// Exits 0 when every step saw what it expected; otherwise prints the failure and exits 1.

'use strict';

const path = require('node:path');
const { chromium } = require('playwright-core');

const TIMEOUT_MS = 10_000;
const [url, shots, ada, bob, bystander, uid] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.setDefaultTimeout(TIMEOUT_MS);
    await page.goto(url);

    // Both gateways, every client of both.
    await page.waitForFunction(() => document.querySelectorAll('#gateways tbody tr').length === 2);
    for (const id of [ada, bob, bystander]) {
      await page.waitForSelector(`#clients tr[data-client="${id}"]`);
    }
    // The plugin table: both worker hosts, and the trap.
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#plugins tbody tr[data-plugin="commands"]')];
      return rows.length === 2 && rows.some((r) => /trap in on-websocket-connect/.test(r.textContent));
    });
    await page.screenshot({ path: path.join(shots, 'admin-cluster.png'), fullPage: true });

    // Found by uid, with her gateway and session.
    await page.fill('#q', uid);
    await page.click('#search-form button');
    const found = `#found tr[data-client="${ada}"]`;
    await page.waitForSelector(found);
    const session = await page.textContent(`${found} pre.session`);
    if (!session.includes(`${uid}-nick`)) throw new Error(`no session shown: ${session}`);
    await page.screenshot({ path: path.join(shots, 'admin-found.png'), fullPage: true });

    // Kicked: gone from the list; the others stay.
    await page.click(`${found} button.kick`);
    await page.waitForSelector(`#clients tr[data-client="${ada}"]`, { state: 'detached' });
    for (const id of [bob, bystander]) {
      await page.waitForSelector(`#clients tr[data-client="${id}"]`);
    }
    await page.screenshot({ path: path.join(shots, 'admin-kicked.png'), fullPage: true });
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
