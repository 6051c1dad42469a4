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

/**
 * A command that applies `action` to the sender and one word (a group or a uid) and replies
 * `<verb> <word>`: join, leave, bind, unbind.
 */
const onSelf = (action, verb) => (client, rest) => {
  const word = text(rest);
  action(client.id, word);
  return reply(`${verb} ${word}`);
};

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
    // A failed gateway operation arrives as an exception whose payload is the `gateway-error`
    // variant; the reply says it in the WIT's words.
    const error = e.payload;
    if (error?.tag === 'invalid-argument') return reply(`error invalid-argument ${error.val}`);
    if (error?.tag === 'unreachable') return reply('error unreachable');
    throw e;
  }
}

/**
 * The exported callbacks; only `on-message` does anything. It is async so that `fetch` can be
 * awaited: componentize-js runs the event loop until the returned promise settles, within the
 * one call.
 */
export const events = {
  onWorkerStart(info) {},
  onConnect(client) {},
  onWebsocketConnect(client, request) {},
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
