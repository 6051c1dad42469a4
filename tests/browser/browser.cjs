// What the browser scripts share: Debian's Chromium launched through playwright-core as these
// machines allow it, a scenario run in it, and pages whose script errors fail the run.

'use strict';

const { chromium } = require('playwright-core');

/** The longest any one wait in a page may take. */
const TIMEOUT_MS = 10_000;

/**
 * Runs `scenarios[name](browser)` in a fresh headless Chromium (`CHROMIUM`, else Debian's),
 * then closes it; a failure is printed and makes the script exit 1. Resolves when done.
 */
function runScenario(scenarios, name) {
  return run(scenarios, name).catch((error) => {
    console.error(error.stack || String(error));
    process.exitCode = 1;
  });
}

async function run(scenarios, name) {
  const scenario = scenarios[name];
  if (!scenario) throw new Error(`no scenario ${name}: pick one of ${Object.keys(scenarios)}`);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // What works on these machines (no network but loopback, running as root); Playwright
    // gives each launch a fresh, temporary user data dir.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    await scenario(browser);
  } finally {
    await browser.close();
  }
}

/** A new page of `context` (a browser or a context) whose script errors fail the run. */
async function newPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on('pageerror', (error) => {
    console.error(`page error: ${error.message}`);
    process.exitCode = 1;
  });
  return page;
}

module.exports = { runScenario, newPage };
