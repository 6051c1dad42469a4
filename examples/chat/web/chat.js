// The chat demo's page: one connection to the `chat` plugin, one JSON object per message (see
// examples/chat/README.md). No build step: the connection is wasmgate's browser client
// (clients/js), which the `[web]` server serves at /_wasmgate/client.js; it reconnects after a
// drop or a server restart, and this page then logs in again as who it was.
//
// The WebSocket address is ws://<this page's host>:7272, or the `ws` query parameter
// (`/?ws=ws://127.0.0.1:9000`), which the tests use to reach servers on other ports.

import { WasmgateClient } from '/_wasmgate/client.js';

const $ = (id) => document.getElementById(id);

const wsUrl =
  new URLSearchParams(location.search).get('ws') ??
  `ws://${location.hostname || '127.0.0.1'}:7272`;

/** Who this page is once logged in, and whom the next message goes to (null: the room). */
const state = { me: null, room: null, whisperTo: null, users: [] };

const client = new WasmgateClient(wsUrl);

client.on('open', () => {
  setStatus('connected', 'ok');
  $('join').disabled = false;
  $('send').disabled = false;
});
client.on('close', () => {
  setStatus('disconnected — reconnecting…', 'down');
  $('join').disabled = true;
  $('send').disabled = true;
});
client.on('reconnect', () => {
  // A new connection is a new client to the server: nickname and room must be given again.
  if (state.me) send({ type: 'login', name: state.me.name, room: state.room });
});
client.on('message', ({ detail }) => {
  let event;
  try {
    event = JSON.parse(detail.data);
  } catch {
    return;
  }
  (handlers[event.type] ?? (() => {}))(event);
});

function same(a, b) {
  return a.id === b.id && a.name === b.name;
}

/** Shows `state.users`, sorted by name as the server sorts them (ignoring case). */
function showUsers() {
  const users = [...state.users].sort((a, b) => {
    const [x, y] = [a.name.toLowerCase(), b.name.toLowerCase()];
    return x < y ? -1 : x > y ? 1 : 0;
  });
  $('count').textContent = `(${users.length})`;
  $('users').replaceChildren(
    ...users.map((user) => {
      const item = document.createElement('li');
      item.textContent = user.name;
      item.dataset.id = user.id;
      if (user.id === state.me?.id) item.classList.add('me');
      item.addEventListener('click', () => {
        if (user.id !== state.me?.id) setWhisperTo(user);
      });
      return item;
    }),
  );
  // Whispering to someone who left makes no sense any more.
  if (state.whisperTo && !users.some((u) => u.id === state.whisperTo.id)) {
    setWhisperTo(null);
  }
}

const handlers = {
  hello(event) {
    $('hello').textContent = event.text;
    // After a reconnection the page logs in again by itself (see `reconnect` above).
    if (state.me) return;
    $('login').hidden = false;
    $('name').focus();
  },
  welcome(event) {
    state.me = event.you;
    state.room = event.room;
    state.users = [];
    $('login').hidden = true;
    $('chat').hidden = false;
    $('room-title').textContent = `#${event.room}`;
    $('messages').replaceChildren();
    addLine('system', event.text);
    setWhisperTo(null);
    $('text').focus();
  },
  users(event) {
    if (event.room !== state.room) return;
    state.users = event.users;
    showUsers();
  },
  history(event) {
    // It comes right after the welcome: older lines go above it, marked as history.
    if (event.room !== state.room || event.messages.length === 0) return;
    const lines = event.messages.map((m) => makeLine('say history', m.text, m.name, new Date(m.time)));
    const heading = makeLine('divider', `earlier in #${event.room}`);
    const end = makeLine('divider', 'now');
    $('messages').prepend(heading, ...lines, end);
    scrollDown();
  },
  join(event) {
    addLine('system', `${event.user.name} joined`);
    state.users = [...state.users.filter((u) => !same(u, event.user)), event.user];
    showUsers();
  },
  leave(event) {
    addLine('system', `${event.user.name} left`);
    // By id and name: someone who logged in again under a new nickname keeps the id.
    state.users = state.users.filter((u) => !same(u, event.user));
    showUsers();
  },
  say(event) {
    addLine('say', event.text, event.from.name);
  },
  whisper(event) {
    const mine = event.from.id === state.me?.id;
    const who = mine ? `you → ${event.to.name}` : `${event.from.name} → you`;
    addLine('whisper', event.text, who);
  },
  error(event) {
    if (state.me) addLine('error', event.text);
    else $('login-error').textContent = event.text;
  },
};

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  send({ type: 'login', name: $('name').value, room: $('room').value });
});

$('say').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value;
  if (!text.trim()) return;
  if (state.whisperTo) send({ type: 'whisper', to: state.whisperTo.id, text });
  else send({ type: 'say', text });
  $('text').value = '';
});

$('to').addEventListener('click', () => setWhisperTo(null));

$('leave').addEventListener('click', () => {
  send({ type: 'leave' });
  state.me = null;
  state.room = null;
  $('chat').hidden = true;
  $('login').hidden = false;
});

function send(request) {
  client.send(JSON.stringify(request));
}

function setStatus(text, kind) {
  $('status').textContent = text;
  $('status').className = `status ${kind}`;
}

function setWhisperTo(user) {
  state.whisperTo = user;
  $('to').textContent = user ? `to ${user.name} only` : 'to everyone';
  $('to').classList.toggle('private', Boolean(user));
}

/** Appends a line to the conversation: `kind` is say, whisper, system or error. */
function addLine(kind, text, author) {
  $('messages').append(makeLine(kind, text, author, new Date()));
  scrollDown();
}

/** A line of the conversation, with its time (none for a divider) and author (if any). */
function makeLine(kind, text, author, when) {
  const line = document.createElement('li');
  line.className = kind;
  if (when) {
    const time = document.createElement('time');
    time.dateTime = when.toISOString();
    time.textContent = formatTime(when);
    line.append(time);
  }
  if (author) {
    const who = document.createElement('b');
    who.textContent = author;
    line.append(who);
  }
  const body = document.createElement('span');
  body.textContent = text;
  line.append(body);
  return line;
}

/** Hours and minutes; with the date too for a day other than today (history). */
function formatTime(when) {
  const clock = { hour: '2-digit', minute: '2-digit' };
  if (when.toDateString() === new Date().toDateString()) return when.toLocaleTimeString([], clock);
  return when.toLocaleString([], { month: 'short', day: 'numeric', ...clock });
}

function scrollDown() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}
