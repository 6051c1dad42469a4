// Drives the chat demo's page in headless Chromium (Debian's, through playwright-core), as
// people would. Started by tests/tests/e2e/chat_browser.rs, which serves the page and the `chat`
// plugin; every wait is for something on the page, bounded (browser.cjs). The scenarios:
//
//   people: two and then three people log in, see each other in the online list, talk,
//     whisper, leave and close the tab.
//   history-before-restart: Ada talks; Bob joins and sees what she said as history, reloads the
//     page and sees it again, then hears her live.
//   history-after-restart: (the test restarted the server) Cy joins and sees all of it.
//
//   node tests/browser/chat.cjs <page url> <screenshot dir> <scenario>
//
// Environment: NODE_PATH (where playwright-core is installed), CHROMIUM (the browser binary).
// Exits 0 when every step saw what it expected; otherwise prints the failure and exits 1.

'use strict';

const path = require('node:path');
const { runScenario, newPage } = require(path.join(__dirname, 'browser.cjs'));

const [url, shots, scenario] = process.argv.slice(2);

async function chat(browser) {
  const ada = await open(browser);
  await login(ada, 'Ada');
  await online(ada, ['Ada']);

  const bob = await open(browser);
  await login(bob, 'Bob');
  await online(bob, ['Ada', 'Bob']);
  await online(ada, ['Ada', 'Bob']);
  await line(ada, 'system', 'Bob joined');

  await say(ada, 'Hello Bob! Welcome to the lobby.');
  await line(bob, 'say', 'Hello Bob! Welcome to the lobby.', 'Ada');
  await say(bob, 'Hi Ada, the list shows us both.');
  await line(ada, 'say', 'Hi Ada, the list shows us both.', 'Bob');

  // A nickname already in the room is refused; the third person picks another.
  const cy = await open(browser);
  await cy.fill('#name', 'ada');
  await cy.click('#join');
  await cy.getByText('ada is already in #lobby').waitFor();
  await login(cy, 'Cy');
  await online(ada, ['Ada', 'Bob', 'Cy']);

  // A whisper reaches only its recipient: Cy sees Bob's next room message, sent after the
  // whisper over the same ordered path, and no whisper before it.
  await bob.locator('#users li', { hasText: 'Ada' }).click();
  await bob.getByText('to Ada only').waitFor();
  await say(bob, 'psst, this is just for you');
  await line(ada, 'whisper', 'psst, this is just for you', 'Bob → you');
  await line(bob, 'whisper', 'psst, this is just for you', 'you → Ada');
  await bob.click('#to');
  await say(bob, 'back to everyone');
  await line(cy, 'say', 'back to everyone', 'Bob');
  const leaked = await cy.locator('#messages li.whisper').count();
  if (leaked !== 0) throw new Error(`Cy saw ${leaked} whisper(s) meant for Ada`);

  await sideBySide(browser, [ada, bob], path.join(shots, 'chat-two-people.png'));

  // Leaving the room and closing the tab both update everyone's online list.
  await bob.click('#leave');
  await bob.locator('#login').waitFor();
  await online(ada, ['Ada', 'Cy']);
  await line(ada, 'system', 'Bob left');
  await cy.context().close();
  await online(ada, ['Ada']);
  await line(ada, 'system', 'Cy left');
  await ada.screenshot({ path: path.join(shots, 'chat-ada-alone.png') });
}

/** What Ada says before Bob joins, and then live. */
const EARLIER = ['Anyone here?', 'I will leave a note: the meeting moved to 3 pm.', 'See you!'];
const LIVE = 'Welcome back, Bob.';

async function historyBeforeRestart(browser) {
  const ada = await open(browser);
  await login(ada, 'Ada');
  for (const text of EARLIER) {
    await say(ada, text);
    await line(ada, 'say', text, 'Ada');
  }
  await history(ada, []);

  const bob = await open(browser);
  await login(bob, 'Bob');
  await history(bob, EARLIER);
  await online(ada, ['Ada', 'Bob']);

  // A reload is a new connection and a new login: the history comes again. Bob logs in
  // again once Ada sees him gone, so that his nickname is free.
  await bob.reload();
  await bob.locator('#status.ok').waitFor();
  await online(ada, ['Ada']);
  await login(bob, 'Bob');
  await history(bob, EARLIER);
  await say(ada, LIVE);
  await line(bob, 'say', LIVE, 'Ada');
  const stored = await bob.locator('#messages li.history').filter({ hasText: LIVE }).count();
  if (stored !== 0) throw new Error('a live message was shown as history');
  await bob.screenshot({ path: path.join(shots, 'history-after-reload.png') });
}

async function historyAfterRestart(browser) {
  const cy = await open(browser);
  await login(cy, 'Cy');
  await history(cy, [...EARLIER, LIVE]);
  await cy.screenshot({ path: path.join(shots, 'history-after-restart.png') });
}

/** Waits until the page's history lines are exactly `texts`, in order, all by Ada. */
async function history(page, texts) {
  await page.waitForFunction(
    (want) =>
      JSON.stringify(
        [...document.querySelectorAll('#messages li.history')].map((li) => [
          li.querySelector('b').textContent,
          li.querySelector('span').textContent,
        ]),
      ) === want,
    JSON.stringify(texts.map((text) => ['Ada', text])),
  );
}

/** One screenshot of `pages` next to each other, as two windows on one screen. */
async function sideBySide(browser, pages, file) {
  const shots = await Promise.all(pages.map((page) => page.screenshot()));
  const screen = await browser.newPage({ viewport: { width: 960 * pages.length + 10, height: 600 } });
  const images = shots.map((png) => `<img src="data:image/png;base64,${png.toString('base64')}">`);
  await screen.setContent(
    `<body style="margin:0;display:flex;gap:10px;background:#444">${images.join('')}</body>`,
  );
  await screen.waitForFunction(() => [...document.images].every((img) => img.complete));
  await screen.screenshot({ path: file });
  await screen.close();
}

/** A new page (its own browser context, like a separate person) with the chat loaded. */
async function open(browser) {
  const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
  const page = await newPage(context);
  await page.goto(url);
  await page.locator('#status.ok').waitFor();
  await page.getByText('Welcome to wasmgate chat!').waitFor();
  return page;
}

async function login(page, name) {
  await page.fill('#name', name);
  await page.fill('#room', 'lobby');
  await page.click('#join');
  await page.locator('#chat').waitFor();
  await page.getByText(`Welcome to #lobby, ${name}!`).waitFor();
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

/** Waits until the page's online list is exactly `names`, in order. */
async function online(page, names) {
  await page.waitForFunction(
    (want) =>
      JSON.stringify([...document.querySelectorAll('#users li')].map((li) => li.textContent)) === want,
    JSON.stringify(names),
  );
}

/** Waits for a line of `kind` in the conversation with `text` (and `author`, if given). */
async function line(page, kind, text, author) {
  let lines = page.locator(`#messages li.${kind}`).filter({ hasText: text });
  if (author) lines = lines.filter({ has: page.locator('b', { hasText: author }) });
  await lines.first().waitFor();
}

runScenario(
  {
    people: chat,
    'history-before-restart': historyBeforeRestart,
    'history-after-restart': historyAfterRestart,
  },
  scenario,
);
