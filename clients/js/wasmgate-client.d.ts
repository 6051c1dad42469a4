// Type declarations for wasmgate-client.js.

/** The client's states. */
export declare const State: {
  readonly CONNECTING: 'connecting';
  readonly OPEN: 'open';
  readonly RECONNECTING: 'reconnecting';
  readonly CLOSED: 'closed';
};

/** One of the client's states. */
export type ClientState = (typeof State)[keyof typeof State];

/** What a page may send: what a WebSocket sends. */
export type Data = string | ArrayBufferLike | Blob | ArrayBufferView;

/** Options of a client; every one has a default. */
export interface ClientOptions {
  /** WebSocket subprotocols. */
  protocols?: string | string[];
  /** How binary messages arrive; default `'arraybuffer'`. */
  binaryType?: BinaryType;
  /** Reconnect after a drop or a failed attempt; default true. */
  reconnect?: boolean;
  /** Shortest wait before a reconnection attempt, ms; default 500. */
  minDelay?: number;
  /** Longest wait before a reconnection attempt, ms; default 30000. */
  maxDelay?: number;
  /** Growth of the wait's bound per failed attempt; default 2. */
  factor?: number;
  /** Most messages kept while disconnected; default 256. */
  maxQueue?: number;
  /** Called with a message refused because the queue is full. */
  onOverflow?: ((data: Data, queued: number) => void) | null;
  /** The gateway's `ping_data`: such messages are not `message` events. Default null. */
  ping?: string | null;
  /** Sent back for each `ping` (keeps `ping_not_response_limit` from dropping the page). */
  pong?: Data | null;
  /** The WebSocket constructor; default the global one. */
  WebSocket?: typeof WebSocket;
}

/** Details of the client's events. */
export interface ClientEventMap {
  open: CustomEvent<{ reconnected: boolean }>;
  message: CustomEvent<{ data: string | ArrayBuffer | Blob }>;
  close: CustomEvent<{ code: number; reason: string; wasClean: boolean; willReconnect: boolean }>;
  reconnecting: CustomEvent<{ attempt: number; delay: number }>;
  reconnect: CustomEvent<{ attempts: number }>;
}

/** A WebSocket to a wasmgate gateway that reconnects, queues sends and handles the heartbeat. */
export declare class WasmgateClient extends EventTarget {
  /** `url` may be a function, called before every attempt (a fresh token in the query). */
  constructor(url: string | URL | (() => string | URL), options?: ClientOptions);
  /** The current state. */
  readonly state: ClientState;
  /** How many messages wait for the next open. */
  readonly queued: number;
  /** The WebSocket address, as given. */
  readonly url: string | URL | (() => string | URL);
  /** Sends now, or queues until the next open; false when refused (closed, queue full). */
  send(data: Data): boolean;
  /** Closes for good: no reconnection, the queue dropped. */
  close(code?: number, reason?: string): void;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEventMap>(type: K, listener: (event: ClientEventMap[K]) => void): () => void;
  addEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (event: ClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
}
