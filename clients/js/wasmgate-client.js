// wasmgate's browser client: one WebSocket to a gateway that comes back by itself.
//
// A plain ES module with no dependencies and no build step: `import { WasmgateClient } from
// '/_wasmgate/client.js'` from a page served by wasmgate's `[web]`, or from a copy of this file.
// What it adds to a bare WebSocket, and why (docs/client-side.md has the whole story):
//   - reconnection after a drop or a server restart, with exponential back-off and full jitter
//     so that thousands of pages cut off together do not all come back in the same instant;
//   - a bounded queue for what the page sends while disconnected, flushed in order on the next
//     open; past its bound a message is refused and `onOverflow` is told, rather than memory
//     growing for as long as the server is away;
//   - the gateway's heartbeat (`ping_data`): answered with `pong` so that
//     `ping_not_response_limit` never drops a quiet page, and kept out of `message` events.

/** The client's states, as `client.state` reports them. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  RECONNECTING: 'reconnecting',
  CLOSED: 'closed',
});

const DEFAULTS = Object.freeze({
  protocols: undefined,
  binaryType: 'arraybuffer',
  reconnect: true,
  minDelay: 500,
  maxDelay: 30_000,
  factor: 2,
  maxQueue: 256,
  onOverflow: null,
  ping: null,
  pong: null,
  WebSocket: globalThis.WebSocket,
});

/**
 * A WebSocket to a wasmgate gateway that reconnects, queues sends and handles the heartbeat.
 * Events (an `EventTarget`): `open`, `message`, `close`, `reconnecting`, `reconnect`.
 */
export class WasmgateClient extends EventTarget {
  #url;
  #options;
  #socket = null;
  #queue = [];
  #state = State.CONNECTING;
  #attempt = 0;
  #timer = null;
  #everOpened = false;

  constructor(url, options = {}) {
    super();
    const unknown = Object.keys(options).filter((k) => !(k in DEFAULTS));
    if (unknown.length) throw new TypeError(`unknown option(s): ${unknown.join(', ')}`);
    this.#url = url;
    this.#options = { ...DEFAULTS, ...options };
    const { minDelay, maxDelay, factor, maxQueue } = this.#options;
    if (!(minDelay >= 0 && maxDelay >= minDelay && factor >= 1 && maxQueue >= 0)) {
      throw new RangeError('need 0 <= minDelay <= maxDelay, factor >= 1, maxQueue >= 0');
    }
    this.#connect();
  }

  /** `connecting`, `open`, `reconnecting` (waiting to try again) or `closed` (by `close()`). */
  get state() {
    return this.#state;
  }

  /** How many messages wait for the next open. */
  get queued() {
    return this.#queue.length;
  }

  /** The WebSocket address: as given (a function is called before each attempt). */
  get url() {
    return this.#url;
  }

  /**
   * Sends `data` now if open, else queues it for the next open. Returns false when it was
   * refused: the client is closed, or the queue is full (then `onOverflow(data)` is called).
   */
  send(data) {
    if (this.#state === State.CLOSED) return false;
    if (this.#state === State.OPEN && this.#queue.length === 0) {
      this.#socket.send(data);
      return true;
    }
    if (this.#queue.length >= this.#options.maxQueue) {
      this.#options.onOverflow?.(data, this.#queue.length);
      return false;
    }
    this.#queue.push(data);
    return true;
  }

  /** Closes for good: no reconnection; queued messages are dropped. */
  close(code = 1000, reason = '') {
    if (this.#state === State.CLOSED) return;
    this.#state = State.CLOSED;
    clearTimeout(this.#timer);
    this.#queue = [];
    this.#socket?.close(code, reason);
  }

  /** Adds `listener` for `type` and returns a function that removes it. */
  on(type, listener) {
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  #connect() {
    const { WebSocket, protocols, binaryType } = this.#options;
    // A function gives each attempt its own address, e.g. with a fresh short-lived token.
    const url = typeof this.#url === 'function' ? this.#url() : this.#url;
    const socket = new WebSocket(url, protocols);
    socket.binaryType = binaryType;
    this.#socket = socket;
    socket.onopen = () => this.#opened();
    socket.onmessage = (event) => this.#received(event.data);
    // A socket that fails to connect fires `error` then `close`: `close` is where it ends.
    socket.onclose = (event) => this.#closed(event);
  }

  #opened() {
    const reconnected = this.#everOpened;
    const attempts = this.#attempt;
    this.#everOpened = true;
    this.#attempt = 0;
    this.#state = State.OPEN;
    // In order, before anything sent from the listeners below.
    const queued = this.#queue;
    this.#queue = [];
    for (const data of queued) this.#socket.send(data);
    this.dispatchEvent(new CustomEvent('open', { detail: { reconnected } }));
    if (reconnected) this.dispatchEvent(new CustomEvent('reconnect', { detail: { attempts } }));
  }

  #received(data) {
    const { ping, pong } = this.#options;
    if (ping !== null && data === ping) {
      if (pong !== null) this.#socket.send(pong);
      return;
    }
    this.dispatchEvent(new CustomEvent('message', { detail: { data } }));
  }

  #closed(event) {
    const wasOpen = this.#state === State.OPEN;
    const willReconnect = this.#state !== State.CLOSED && this.#options.reconnect !== false;
    if (this.#state !== State.CLOSED) {
      this.#state = willReconnect ? State.RECONNECTING : State.CLOSED;
    }
    // One `close` per lost connection: failed attempts to reconnect are `reconnecting` only.
    if (wasOpen || !willReconnect) {
      const { code, reason, wasClean } = event;
      this.dispatchEvent(
        new CustomEvent('close', { detail: { code, reason, wasClean, willReconnect } }),
      );
    }
    if (willReconnect && this.#state === State.RECONNECTING) this.#schedule();
  }

  #schedule() {
    const { minDelay, maxDelay, factor } = this.#options;
    this.#attempt += 1;
    // Jittered: anywhere between minDelay and the exponential bound of this attempt.
    const bound = Math.min(maxDelay, minDelay * factor ** this.#attempt);
    const delay = minDelay + Math.random() * (bound - minDelay);
    this.dispatchEvent(
      new CustomEvent('reconnecting', { detail: { attempt: this.#attempt, delay } }),
    );
    this.#timer = setTimeout(() => {
      if (this.#state !== State.RECONNECTING) return;
      this.#state = State.CONNECTING;
      this.#connect();
    }, delay);
  }
}
