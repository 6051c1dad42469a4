// The {{name}} wasmgate plugin: every message goes back to the client that sent it.
//
// Every callback of the `events` interface is here; those that do nothing can stay so. The
// gateway calls are imported from 'wasmgate:plugin/gateway@{{version}}' (see wit/plugin.wit).

import { sendToClient } from 'wasmgate:plugin/gateway@{{version}}';

export const events = {
  onWorkerStart(info) {},
  // Throwing here refuses the connection: the place to check a token (request.query,
  // request.headers) before the client counts as connected.
  onWebsocketConnect(client, request) {},
  onConnect(client) {},
  onMessage(client, data) {
    try {
      sendToClient(client.id, data);
    } catch {
      // The client left meanwhile: nobody to answer.
    }
  },
  onClose(client) {},
  onTimer(id) {},
  onWorkerStop() {},
};
