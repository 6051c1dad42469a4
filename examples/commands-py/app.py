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
from wit_world.imports import atomics, gateway, outgoing_handler, sql, store
from wit_world.imports import wasi_http_types as http
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


# The database the SQL commands use; the tests grant it as SQLite or PostgreSQL.
DATABASE = "main"

# These statements work in SQLite and PostgreSQL alike ($1 placeholders included).
CREATE_TABLE = "create table if not exists commands_kv (k text primary key, v text not null)"

# The `<kind>` of an `error sql <kind> <message>` reply, in the WIT's words.
SQL_ERRORS = {
    sql.Error_NoSuchDatabase: "no-such-database",
    sql.Error_AccessDenied: "access-denied",
    sql.Error_InvalidQuery: "invalid-query",
    sql.Error_TooLarge: "too-large",
    sql.Error_Timeout: "timeout",
    sql.Error_Io: "io",
}


def table() -> sql.Connection:
    """Opens the database and creates the table on first use."""
    db = sql.Connection.open(DATABASE)
    db.execute(CREATE_TABLE, [])
    return db


def sql_command(action: Callable[[Client, Optional[bytes]], str]) -> Run:
    """A SQL command: its reply, or `error sql <kind> <message>`."""

    def command(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
        try:
            return reply(action(client, rest))
        except Err as error:
            kind = SQL_ERRORS.get(type(error.value), "io")
            return reply(f"error sql {kind} {error.value.value}")

    return command


def sql_put(client: Client, rest: Optional[bytes]) -> str:
    key, value = split(present(rest))
    key, value = text(key), text(value)
    table().execute(
        "insert into commands_kv (k, v) values ($1, $2) "
        "on conflict (k) do update set v = excluded.v",
        [sql.Value_Text(key), sql.Value_Text(value)],
    )
    return f"stored {key}"


def sql_get(client: Client, rest: Optional[bytes]) -> str:
    key = text(rest)
    rows = table().query("select v from commands_kv where k = $1", [sql.Value_Text(key)]).rows
    if not rows:
        return "none"
    value = rows[0][0]
    return f"sqlvalue {key} {value.value if isinstance(value, sql.Value_Text) else ''}"


def sql_slow(client: Client, rest: Optional[bytes]) -> str:
    """Runs far longer than any test's process_timeout: PostgreSQL sleeps ten seconds;
    SQLite, which has no sleep, counts to a billion."""
    if rest is not None:
        raise Usage()
    db = sql.Connection.open(DATABASE)
    try:
        db.query("select 1 as slept from pg_sleep(10)", [])
    except Err as error:
        if not isinstance(error.value, sql.Error_InvalidQuery):
            raise
        db.query(
            "with recursive c(x) as (select 1 union all select x + 1 from c "
            "where x < 1000000000) select count(*) as n from c",
            [],
        )
    return "slept"


# The key-value bucket the `kv*` and `incr` commands use.
BUCKET = "default"


def kv_set(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    key, value = split(present(rest))
    key, value = text(key), present(value)
    with store.open(BUCKET) as bucket:
        bucket.set(key, value)
    return reply("ok")


def kv_get(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    key = text(rest)
    with store.open(BUCKET) as bucket:
        value = bucket.get(key)
    if value is None:
        return reply("none")
    return reply(f"value {key} ") + value


def incr(client: Client, rest: Optional[bytes]) -> Optional[bytes]:
    key = text(rest)
    with store.open(BUCKET) as bucket:
        n = atomics.increment(bucket, key, 1)
    return reply(f"incr {key} {n}")


def kv_reason(error: store.Error) -> str:
    """The `<reason>` of an `error kv <reason>` reply, in the WIT's words."""
    if isinstance(error, store.Error_NoSuchStore):
        return "no-such-store"
    if isinstance(error, store.Error_AccessDenied):
        return "access-denied"
    return error.value


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
    ("sqlput <key> <value>", sql_command(sql_put)),
    ("sqlget <key>", sql_command(sql_get)),
    ("sqlslow", sql_command(sql_slow)),
    ("kvset <key> <value>", kv_set),
    ("kvget <key>", kv_get),
    ("incr <key>", incr),
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
        if isinstance(
            error.value, (store.Error_NoSuchStore, store.Error_AccessDenied, store.Error_Other)
        ):
            return reply(f"error kv {kv_reason(error.value)}")
        # A failed gateway operation, in the WIT's words: `unreachable`, or
        # `invalid-argument <why>`.
        if isinstance(error.value, GatewayError_InvalidArgument):
            return reply(f"error invalid-argument {error.value.value}")
        return reply("error unreachable")


def asked(query: str, key: str) -> Optional[str]:
    """The value of `key` in a query string (`k=v` pairs joined by `&`), as is: not
    percent-decoded."""
    for pair in query.split("&"):
        k, equals, v = pair.partition("=")
        if equals and k == key:
            return v
    return None


class Events(exports.Events):
    """The exported callbacks: `on-message` runs the commands; `on-websocket-connect` and
    `on-connect` serve the `notify` and `crash` query parameters."""

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
        group = next((v for k, v in client.session if k == "notify"), None)
        if group is not None:
            try:
                gateway.send_to_group([group], reply(f"connected {client.id}"), [])
            except Err:
                pass

    def on_websocket_connect(self, client: Client, request: WebsocketRequest) -> None:
        # `notify` is kept before any crash: a client refused by the crash would announce
        # itself if `on-connect` ran for it.
        group = asked(request.query, "notify")
        if group is not None:
            gateway.update_session(client.id, [("notify", group)])
        crash = asked(request.query, "crash")
        if crash == "trap":
            raise RuntimeError("commands: crash=trap in on-websocket-connect")
        if crash == "loop":
            while True:
                pass
        if crash == "alloc":
            held = []
            while True:
                held.append(bytearray(1 << 20))

    def on_close(self, client: Client) -> None:
        pass

    def on_timer(self, id: int) -> None:
        pass

    def on_worker_stop(self) -> None:
        pass
