// The wasmgate reference plugin in JavaScript: every client message is one command, and replies
// go to the sender. It behaves exactly like the Rust original in examples/commands (see its
// README for the command list and the parsing rules); the conformance tests hold all three builds
// to the same assertions.
//
// A message is `<command> <arguments>`, split on single spaces. A word argument (group, uid, key,
// client id) is UTF-8 and ends at the next space, except the last one, which takes the rest of the
// message; a payload is every byte after the last word, UTF-8 or not.

import {
  bindUid,
  closeClient,
  getClientCountByGroup,
  joinGroup,
  leaveGroup,
  sendToAll,
  sendToClient,
  sendToGroup,
  sendToUid,
  unbindUid,
  updateSession,
} from 'wasmgate:plugin/gateway@0.2.0';
import { Connection } from 'wasmgate:plugin/sql@0.2.0';
import { open } from 'wasi:keyvalue/store@0.2.0-draft2';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft2';

const SPACE = 0x20;
const encoder = new TextEncoder();
// `fatal`: a word that is not UTF-8 is a usage error, as in the Rust original, not U+FFFD;
// `ignoreBOM`: a leading U+FEFF is kept as part of the word, not stripped.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A missing argument or a word that is not UTF-8: the reply is `error usage: <usage>`. */
class Usage extends Error {}

/** Splits at the first space: the bytes before it, and those after it (undefined: no space). */
function split(bytes) {
  const i = bytes.indexOf(SPACE);
  return i < 0 ? [bytes, undefined] : [bytes.subarray(0, i), bytes.subarray(i + 1)];
}

/** A word argument: it must be there and be UTF-8. */
function text(word) {
  if (word === undefined) throw new Usage();
  try {
    return decoder.decode(word);
  } catch {
    throw new Usage();
  }
}

/** A payload argument: any bytes, but it must be there. */
function present(rest) {
  if (rest === undefined) throw new Usage();
  return rest;
}

const reply = (s) => encoder.encode(s);

// The key-value bucket the `kv*` and `incr` commands use.
const BUCKET = 'default';

/** Runs `use` on the bucket, then releases the handle. */
function withBucket(use) {
  const bucket = open(BUCKET);
  try {
    return use(bucket);
  } finally {
    bucket[Symbol.dispose]?.();
  }
}

/** A failed key-value call, in the WIT's words: the reply is `error kv <reason>`. */
class KvError extends Error {
  constructor(error) {
    super('key-value call failed');
    this.reason = error?.tag === 'other' ? error.val : error?.tag;
  }
}

/** Runs a key-value call; its error becomes a `KvError`. */
function kv(call) {
  try {
    return call();
  } catch (e) {
    throw new KvError(e.payload);
  }
}

/**
 * A command that applies `action` to the sender and one word (a group or a uid) and replies
 * `<verb> <word>`: join, leave, bind, unbind.
 */
const onSelf = (action, verb) => (client, rest) => {
  const word = text(rest);
  action(client.id, word);
  return reply(`${verb} ${word}`);
};

// The database the SQL commands use; the tests grant it as SQLite or PostgreSQL.
const DATABASE = 'main';

// These statements work in SQLite and PostgreSQL alike ($1 placeholders included).
const CREATE_TABLE = 'create table if not exists commands_kv (k text primary key, v text not null)';

/** Opens the database and creates the table on first use. */
function table() {
  const db = Connection.open(DATABASE);
  db.execute(CREATE_TABLE, []);
  return db;
}

/** A SQL command: its reply, or `error sql <kind> <message>` (an error value arrives as an
 * exception whose payload is the `error` variant). */
const sqlCommand = (action) => (client, rest) => {
  try {
    return reply(action(rest));
  } catch (e) {
    if (e instanceof Usage || e.payload?.tag === undefined) throw e;
    return reply(`error sql ${e.payload.tag} ${e.payload.val}`);
  }
};

function sqlPut(rest) {
  const [key, value] = split(present(rest));
  const [k, v] = [text(key), text(value)];
  table().execute(
    'insert into commands_kv (k, v) values ($1, $2) on conflict (k) do update set v = excluded.v',
    [{ tag: 'text', val: k }, { tag: 'text', val: v }],
  );
  return `stored ${k}`;
}

function sqlGet(rest) {
  const key = text(rest);
  const { rows } = table().query('select v from commands_kv where k = $1', [{ tag: 'text', val: key }]);
  if (rows.length === 0) return 'none';
  const value = rows[0][0];
  return `sqlvalue ${key} ${value.tag === 'text' ? value.val : ''}`;
}

/** Runs far longer than any test's process_timeout: PostgreSQL sleeps ten seconds; SQLite,
 * which has no sleep, counts to a billion. */
function sqlSlow(rest) {
  if (rest !== undefined) throw new Usage();
  const db = Connection.open(DATABASE);
  try {
    db.query('select 1 as slept from pg_sleep(10)', []);
  } catch (e) {
    if (e.payload?.tag !== 'invalid-query') throw e;
    db.query(
      'with recursive c(x) as (select 1 union all select x + 1 from c where x < 1000000000) '
        + 'select count(*) as n from c',
      [],
    );
  }
  return 'slept';
}

// Every command, in README order: its usage line, whose first word is the command, and what it
// does with the bytes after that word (undefined: not even a space).
const COMMANDS = [
  ['echo <payload>', (client, rest) => present(rest)],
  ['join <group>', onSelf(joinGroup, 'joined')],
  ['leave <group>', onSelf(leaveGroup, 'left')],
  ['pub <group> <payload>', (client, rest) => {
    const [group, payload] = split(present(rest));
    sendToGroup([text(group)], present(payload), []);
  }],
  ['all <payload>', (client, rest) => {
    sendToAll(present(rest), []);
  }],
  ['bind <uid>', onSelf(bindUid, 'bound')],
  ['unbind <uid>', onSelf(unbindUid, 'unbound')],
  ['touid <uid> <payload>', (client, rest) => {
    const [uid, payload] = split(present(rest));
    sendToUid([text(uid)], present(payload));
  }],
  ['count <group>', (client, rest) => {
    const group = text(rest);
    return reply(`count ${group} ${getClientCountByGroup(group)}`);
  }],
  ['set <key> <value>', (client, rest) => {
    const [key, value] = split(present(rest));
    updateSession(client.id, [[text(key), text(value)]]);
    return reply('ok');
  }],
  ['get <key>', (client, rest) => {
    const key = text(rest);
    const found = client.session.find(([k]) => k === key);
    return reply(found ? `value ${key} ${found[1]}` : 'none');
  }],
  ['whoami', (client, rest) => {
    if (rest !== undefined) throw new Usage();
    return reply(client.id);
  }],
  ['kick <client-id>', (client, rest) => {
    closeClient(text(rest), undefined);
  }],
  ['sqlput <key> <value>', sqlCommand(sqlPut)],
  ['sqlget <key>', sqlCommand(sqlGet)],
  ['sqlslow', sqlCommand(sqlSlow)],
  ['kvset <key> <value>', (client, rest) => {
    const [word, value] = split(present(rest));
    const key = text(word);
    present(value);
    kv(() => withBucket((bucket) => bucket.set(key, value)));
    return reply('ok');
  }],
  ['kvget <key>', (client, rest) => {
    const key = text(rest);
    const value = kv(() => withBucket((bucket) => bucket.get(key)));
    if (value === undefined) return reply('none');
    const head = reply(`value ${key} `);
    const out = new Uint8Array(head.length + value.length);
    out.set(head);
    out.set(value, head.length);
    return out;
  }],
  ['incr <key>', (client, rest) => {
    const key = text(rest);
    const n = kv(() => withBucket((bucket) => increment(bucket, key, 1n)));
    return reply(`incr ${key} ${n}`);
  }],
  ['fetch <url>', (client, rest) => fetched(text(rest))],
];

/** `fetch <url>`: `fetched <status> <body>`, or `error fetch <why>`. */
async function fetched(url) {
  let status, body;
  try {
    const response = await fetch(url);
    status = response.status;
    body = new Uint8Array(await response.arrayBuffer());
  } catch (e) {
    return reply(`error fetch ${e?.message ?? e}`);
  }
  const head = reply(`fetched ${status} `);
  const answer = new Uint8Array(head.length + body.length);
  answer.set(head);
  answer.set(body, head.length);
  return answer;
}

const BY_WORD = new Map(COMMANDS.map(([usage, run]) => [usage.split(' ')[0], [usage, run]]));

/**
 * Carries out one message; returns the reply to the sender, if there is one (a promise of it
 * for `fetch`).
 */
function run(client, message) {
  const [word, rest] = split(message);
  // Command words are ASCII: bytes that are not UTF-8 match none of them.
  let found;
  try {
    found = BY_WORD.get(decoder.decode(word));
  } catch {
    found = undefined;
  }
  if (found === undefined) return reply('error unknown command');
  const [usage, command] = found;
  try {
    return command(client, rest);
  } catch (e) {
    if (e instanceof Usage) return reply(`error usage: ${usage}`);
    if (e instanceof KvError) return reply(`error kv ${e.reason}`);
    // A failed gateway operation arrives as an exception whose payload is the `gateway-error`
    // variant; the reply says it in the WIT's words.
    const error = e.payload;
    if (error?.tag === 'invalid-argument') return reply(`error invalid-argument ${error.val}`);
    if (error?.tag === 'unreachable') return reply('error unreachable');
    throw e;
  }
}

/** The value of `key` in a query string (`k=v` pairs joined by `&`), as is: not percent-decoded. */
function asked(query, key) {
  for (const pair of query.split('&')) {
    const i = pair.indexOf('=');
    if (i >= 0 && pair.slice(0, i) === key) return pair.slice(i + 1);
  }
  return undefined;
}

/**
 * The exported callbacks: `on-message` runs the commands; `on-websocket-connect` and `on-connect`
 * serve the `notify` and `crash` query parameters. `onMessage` is async so that `fetch` can be
 * awaited: componentize-js runs the event loop until the returned promise settles, within the
 * one call.
 */
export const events = {
  onWorkerStart(info) {},
  onConnect(client) {
    const notify = client.session.find(([key]) => key === 'notify');
    if (notify === undefined) return;
    try {
      sendToGroup([notify[1]], encoder.encode(`connected ${client.id}`), []);
    } catch {
      // Nobody to announce to.
    }
  },
  // `notify` is kept before any crash: a client refused by the crash would announce itself if
  // `on-connect` ran for it.
  onWebsocketConnect(client, request) {
    const group = asked(request.query, 'notify');
    if (group !== undefined) updateSession(client.id, [['notify', group]]);
    switch (asked(request.query, 'crash')) {
      case 'trap':
        throw new Error('commands: crash=trap in on-websocket-connect');
      case 'loop':
        for (;;) {}
      case 'alloc': {
        const held = [];
        for (;;) held.push(new Uint8Array(1 << 20).fill(1));
      }
    }
  },
  async onMessage(client, data) {
    const answer = await run(client, data);
    if (answer === undefined) return;
    try {
      sendToClient(client.id, answer);
    } catch {
      // The sender left meanwhile: nobody to answer.
    }
  },
  onClose(client) {},
  onTimer(id) {},
  onWorkerStop() {},
};
