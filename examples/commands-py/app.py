"""The wasmgate reference plugin in Python: every client message is one command, and replies go
to the sender. It behaves exactly like the Rust original in examples/commands (see its README for
the command list and the parsing rules); the conformance tests hold all three builds to the same
assertions.

A message is `<command> <arguments>`, split on single spaces. A word argument (group, uid, key,
client id) is UTF-8 and ends at the next space, except the last one, which takes the rest of the
message; a payload is every byte after the last word, UTF-8 or not.
"""

import re
from typing import Callable, List, Optional, Tuple

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import gateway, outgoing_handler, wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed
# Built with the `plugin-http` world (plugin plus wasi:http's outgoing handler), where two
# interfaces are called `types`: componentize-py names ours after its package.
from wit_world.imports.wasmgate_plugin_types import (
    Client,
    GatewayError_InvalidArgument,
    WebsocketRequest,
    WorkerInfo,
)


class Usage(Exception):
    """A missing argument or a word that is not UTF-8: the reply is `error usage: <usage>`."""


def split(data: bytes) -> Tuple[bytes, Optional[bytes]]:
    """Splits at the first space: the bytes before it, and those after it if there is one."""
    head, space, tail = data.partition(b" ")
    return head, (tail if space else None)


def text(word: Optional[bytes]) -> str:
    """A word argument: it must be there and be UTF-8."""
    if word is None:
        raise Usage()
    try:
        return word.decode("utf-8")
    except UnicodeDecodeError:
        raise Usage() from None


def present(rest: Optional[bytes]) -> bytes:
    """A payload argument: any bytes, but it must be there."""
    if rest is None:
        raise Usage()
    return rest


def reply(message: str) -> bytes:
    return message.encode("utf-8")


Run = Callable[[Client, Optional[bytes]], Optional[bytes]]


def on_self(action: Callable[[str, str], None], verb: str) -> Run:
    """A command that applies `action` to the sender and one word (a group or a uid) and
    replies `<verb> <word>`: join, leave, bind, unbind."""

    def command(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
        word = text(rest)
        action(client.id, word)
        return reply(f"{verb} {word}")

    return command


def publish(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    group, payload = split(present(rest))
    gateway.send_to_group([text(group)], present(payload), [])
    return None


def everyone(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    gateway.send_to_all(present(rest), [])
    return None


def to_uid(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    uid, payload = split(present(rest))
    gateway.send_to_uid([text(uid)], present(payload))
    return None


def count(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    group = text(rest)
    n = gateway.get_client_count_by_group(group)
    return reply(f"count {group} {n}")


def set_key(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    key, value = split(present(rest))
    gateway.update_session(client.id, [(text(key), text(value))])
    return reply("ok")


def get_key(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    key = text(rest)
    for k, v in client.session:
        if k == key:
            return reply(f"value {key} {v}")
    return reply("none")


def whoami(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    if rest is not None:
        raise Usage()
    return reply(client.id)


def kick(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    gateway.close_client(text(rest), None)
    return None


def echo(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    return present(rest)


class FetchError(Exception):
    """A request that got no response: the reply is `error fetch <why>`."""


def error_name(code: object) -> str:
    """A wasi:http `error-code` as the WIT spells it, e.g. `HTTP-request-denied`."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    kebab = re.sub(r"(?<!^)([A-Z])", r"-\1", name).lower()
    for word in ("http", "dns", "tls"):
        if kebab == word or kebab.startswith(word + "-"):
            kebab = word.upper() + kebab[len(word):]
    return kebab


def get(url: str) -> Tuple[int, bytes]:
    """GET `url` through the host: the status and the whole body."""
    scheme, sep, rest = url.partition("://")
    schemes = {"http": http.Scheme_Http(), "https": http.Scheme_Https()}
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if not sep or scheme not in schemes or not authority:
        raise FetchError("invalid-url")
    request = http.OutgoingRequest(http.Fields.from_list([]))
    request.set_method(http.Method_Get())
    request.set_scheme(schemes[scheme])
    request.set_authority(authority)
    request.set_path_with_query(path)
    outgoing = request.body()
    try:
        future = outgoing_handler.handle(request, None)
        http.OutgoingBody.finish(outgoing, None)
    except Err as e:
        raise FetchError(error_name(e.value)) from None
    future.subscribe().block()
    answer = future.get()
    if not isinstance(answer, Ok) or not isinstance(answer.value, Ok):
        code = answer.value.value if isinstance(answer, Ok) else None
        raise FetchError(error_name(code) if code is not None else "internal-error")
    response = answer.value.value
    status = response.status()
    incoming = response.consume()
    stream = incoming.stream()
    body = bytearray()
    while True:
        try:
            body += stream.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            code = http.http_error_code(e.value.value)
            if code is None:
                # A body cut short comes without a code, its reason in the text's first
                # line (a backtrace may follow).
                why = e.value.value.to_debug_string().split("\n")[0]
                raise FetchError(f"internal-error {why}") from None
            raise FetchError(error_name(code)) from None
    return status, bytes(body)


def fetch(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    url = text(rest)
    try:
        status, body = get(url)
    except FetchError as e:
        return reply(f"error fetch {e}")
    return reply(f"fetched {status} ") + body


# Every command, in README order: its usage line, whose first word is the command, and what it
# does with the bytes after that word (None: not even a space).
COMMANDS: List[Tuple[str, Run]] = [
    ("echo <payload>", echo),
    ("join <group>", on_self(gateway.join_group, "joined")),
    ("leave <group>", on_self(gateway.leave_group, "left")),
    ("pub <group> <payload>", publish),
    ("all <payload>", everyone),
    ("bind <uid>", on_self(gateway.bind_uid, "bound")),
    ("unbind <uid>", on_self(gateway.unbind_uid, "unbound")),
    ("touid <uid> <payload>", to_uid),
    ("count <group>", count),
    ("set <key> <value>", set_key),
    ("get <key>", get_key),
    ("whoami", whoami),
    ("kick <client-id>", kick),
    ("fetch <url>", fetch),
]

BY_WORD = {usage.split(" ")[0].encode("utf-8"): (usage, run) for usage, run in COMMANDS}


def run(client: Client, message: bytes) -> Optional[bytes]:
    """Carries out one message; returns the reply to the sender, if there is one."""
    word, rest = split(message)
    found = BY_WORD.get(word)
    if found is None:
        return reply("error unknown command")
    usage, command = found
    try:
        return command(client, rest)
    except Usage:
        return reply(f"error usage: {usage}")
    except Err as error:
        # A failed gateway operation, in the WIT's words: `unreachable`, or
        # `invalid-argument <why>`.
        if isinstance(error.value, GatewayError_InvalidArgument):
            return reply(f"error invalid-argument {error.value.value}")
        return reply("error unreachable")


class Events(exports.Events):
    """The exported callbacks; only `on-message` does anything."""

    def on_message(self, client: Client, data: bytes) -> None:
        answer = run(client, data)
        if answer is not None:
            try:
                gateway.send_to_client(client.id, answer)
            except Err:
                pass  # The sender left meanwhile: nobody to answer.

    def on_worker_start(self, info: WorkerInfo) -> None:
        pass

    def on_connect(self, client: Client) -> None:
        pass

    def on_websocket_connect(self, client: Client, request: WebsocketRequest) -> None:
        pass

    def on_close(self, client: Client) -> None:
        pass

    def on_timer(self, id: int) -> None:
        pass

    def on_worker_stop(self) -> None:
        pass
