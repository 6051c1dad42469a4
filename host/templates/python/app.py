"""The {{name}} wasmgate plugin: every message goes back to the client that sent it.

Every callback of the `events` interface is here; those that do nothing can stay so. The
generated bindings (`componentize-py -d wit -w plugin bindings .`) show every gateway call.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import gateway
from wit_world.imports.types import Client, WebsocketRequest, WorkerInfo


class Events(exports.Events):
    def on_worker_start(self, info: WorkerInfo) -> None:
        pass

    def on_websocket_connect(self, client: Client, request: WebsocketRequest) -> None:
        # Raising here refuses the connection: the place to check a token (request.query,
        # request.headers) before the client counts as connected.
        pass

    def on_connect(self, client: Client) -> None:
        pass

    def on_message(self, client: Client, data: bytes) -> None:
        try:
            gateway.send_to_client(client.id, data)
        except Err:
            pass  # The client left meanwhile: nobody to answer.

    def on_close(self, client: Client) -> None:
        pass

    def on_timer(self, id: int) -> None:
        pass

    def on_worker_stop(self) -> None:
        pass
