// Drives the browser client library (clients/js, served by wasmgate at /_wasmgate/client.js)
// in headless Chromium through tests/browser/client/index.html, against the `echo` plugin.
// Started by tests/tests/e2e/client_js.rs, which restarts the server when asked: the script
// prints `stop` or `start` on a line of its own and waits for a line on stdin before going on.
// Every wait is bounded (browser.cjs). The scenarios:
//
//   restart: a page connected through the library; the server stops; the page sends while it
//     is down (queued); the server starts again on the same port; the page reconnects by
//     itself and the queued message is echoed. Its events: open, close, reconnecting…, open,
//     reconnect, in that order, and one close only.
//   overflow: with `maxQueue: 2`, three sends while the server is down: the third goes to
//     the overflow callback and is never sent; the first two are, after the reconnection.
//   heartbeat: (the gateway pings with `ping_data = "ping"` and drops a client silent for about
//     one interval) a page that answers with `pong` stays connected while it says nothing
//     else; a page that only ignores the pings is dropped; neither sees a ping as a message.
//
//   node tests/browser/client.cjs <page url> <ws url> <scenario>
//
// Environment: NODE_PATH (where playwright-core is installed), CHROMIUM (the browser binary).

'use strict';

const path = require('node:path');
const readline = require('node:readline');
const { runScenario, newPage } = require(path.join(__dirname, 'browser.cjs'));

const [url, ws, scenario] = process.argv.slice(2);
const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

/** Asks the test to do `what` to the server and waits until it says it is done. */
async function server(what) {
  console.log(what);
  const { done } = await lines.next();
  if (done) throw new Error(`stdin closed while waiting for the server to ${what}`);
}

async function restart(browser) {
  const page = await open(browser, {});
  await echoed(page, 'before the restart');
  await server('stop');
  await seen(page, 'close');
  // Between attempts (`reconnecting`) or during one (`connecting`): either way, not open.
  const queued = await page.evaluate(() => [
    client.send('sent while down'),
    client.state !== 'open',
    client.queued,
  ]);
  expect(queued, [true, true, 1], 'send while down: queued');
  await server('start');
  await seen(page, 'message sent while down');
  await echoed(page, 'after the restart');
  const events = (await page.evaluate(() => window.seen)).filter((e) => !e.startsWith('message'));
  const attempts = events.filter((e) => e === 'reconnecting').length;
  if (attempts < 1) throw new Error(`no reconnection attempt: ${events}`);
  expect(
    events.filter((e) => e !== 'reconnecting'),
    ['open', 'close', 'open', 'reconnect'],
    'events in order',
  );
  const close = events.indexOf('close');
  const firstAttempt = events.indexOf('reconnecting');
  if (!(close < firstAttempt && events.lastIndexOf('reconnecting') < events.indexOf('reconnect'))) {
    throw new Error(`close, attempts, then reconnect: ${events}`);
  }
  expect(await page.evaluate(() => client.state), 'open', 'state after reconnecting');
}

async function overflow(browser) {
  const page = await open(browser, { maxQueue: 2 });
  await echoed(page, 'before');
  await server('stop');
  await seen(page, 'close');
  const sent = await page.evaluate(() => ['one', 'two', 'three'].map((m) => client.send(m)));
  expect(sent, [true, true, false], 'the third send refused');
  expect(await page.evaluate(() => window.overflowed), ['three'], 'the overflow callback');
  await server('start');
  await seen(page, 'message two');
  await echoed(page, 'after');
  const messages = (await page.evaluate(() => window.seen)).filter((e) => e.startsWith('message'));
  expect(messages, ['message before', 'message one', 'message two', 'message after'], 'echoes');
}

async function heartbeat(browser) {
  const answers = await open(browser, { ping: 'ping', pong: 'pong' });
  const ignores = await open(browser, { ping: 'ping', reconnect: false });
  // Dropped after about one silent interval: by then the other one has been pinged too.
  await seen(ignores, 'close');
  expect(await ignores.evaluate(() => client.state), 'closed', 'the silent page, dropped');
  await echoed(answers, 'still connected');
  const events = await answers.evaluate(() => window.seen);
  if (events.includes('close')) throw new Error(`the page that answers was dropped: ${events}`);
  // Its pongs are ordinary messages to the plugin, which echoes them.
  if (!events.includes('message pong')) throw new Error(`it was never pinged: ${events}`);
  for (const page of [answers, ignores]) {
    const seenPing = (await page.evaluate(() => window.seen)).includes('message ping');
    if (seenPing) throw new Error('a ping was delivered as a message');
  }
}

/** A new page with a client of `ws` made with `options` (quick reconnection), once open. */
async function open(browser, options) {
  const page = await newPage(browser);
  await page.goto(url);
  await page.waitForFunction(() => typeof window.start === 'function');
  await page.evaluate(
    ([ws, options]) => window.start(ws, { minDelay: 50, maxDelay: 400, ...options }),
    [ws, options],
  );
  await seen(page, 'open');
  return page;
}

/** Sends `text` and waits for the echo. */
async function echoed(page, text) {
  await page.evaluate((text) => client.send(text), text);
  await seen(page, `message ${text}`);
}

/** Waits until the page saw `entry` (an event's name, or `message <data>`). */
async function seen(page, entry) {
  await page.waitForFunction((entry) => window.seen.includes(entry), entry);
}

function expect(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// Then stdin is closed, or it would keep the script running.
runScenario({ restart, overflow, heartbeat }, scenario).finally(() => input.close());
