//! The chat demo's plugin: nicknames, rooms, the list of who is online in a room, room messages
//! and private messages, spoken as one JSON object per WebSocket message (see README.md).
//!
//! The plugin keeps no state of its own. A logged-in client's nickname and room are in its
//! session, its room membership is the gateway group `room:<name>` and the uid
//! `<room>/<nickname>`, the online list is asked of the gateways once per login (for the
//! newcomer; the others hear `join` and `leave`), and each room's history is in the SQL
//! database the host keeps for the app ([`history`]).
//!
//! Departures come from presence ([`Presence::on_uid_offline`]): whether a member closed,
//! left, moved to another room or its gateway was lost, the uid it held goes offline once in
//! the cluster, and that is when the room hears it left; nobody rescans the room's sessions for
//! it. Arrivals are announced by the login itself, which sends the newcomer the list. So any
//! instance can serve any event, and a hot reload, a trapped instance or a second worker host
//! loses nothing; a restart of the server loses the sessions, not the history.

mod history;

use history::Said;
use serde::{Deserialize, Serialize};
use wasmgate_sdk::{Client, GatewayError, Plugin, Presence, gateway, json, log};

struct Chat;

impl Plugin for Chat {
    fn on_connect(client: Client) {
        send(
            &client.id,
            &Event::Hello {
                text: "Welcome to wasmgate chat! Pick a nickname and a room.",
            },
        );
    }

    fn on_message(client: Client, data: Vec<u8>) {
        let result = match serde_json::from_slice::<Request>(&data) {
            Ok(Request::Login { name, room }) => login(&client, &name, &room),
            Ok(Request::Say { text }) => say(&client, &text),
            Ok(Request::Whisper { to, text }) => whisper(&client, &to, &text),
            Ok(Request::Leave) => leave(&client),
            Err(e) => Err(format!("not a chat request: {e}")),
        };
        if let Err(text) = result {
            send(&client.id, &Event::Error { text: &text });
        }
    }
}

wasmgate_sdk::export!(Chat);

/// A member's uid (`<room>/<nickname>`) goes offline when its client closes, leaves, logs in
/// elsewhere or is lost with its gateway: told here once, wherever the client was.
impl Presence for Chat {
    fn on_uid_online(_uid: String, _client: Client) {}

    fn on_uid_offline(uid: String, client: Client) {
        // The gateway has already taken the client out of its room's group.
        if let Some((room, name)) = uid.split_once('/') {
            let me = Member {
                user: User {
                    id: client.id,
                    name: name.into(),
                },
                room: room.into(),
            };
            announce_departure(&me);
        }
    }
}

wasmgate_sdk::export_presence!(Chat);

/// What a client may ask, as `{"type": "login", ...}`.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    /// Enter `room` as `name`; a client already in a room leaves it first.
    Login { name: String, room: String },
    /// Say `text` to the room.
    Say { text: String },
    /// Say `text` to one client of the room, by client id.
    Whisper { to: String, text: String },
    /// Leave the room, staying connected.
    Leave,
}

/// What the plugin sends, as `{"type": "say", ...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event<'a> {
    /// On connect: the server-side welcome.
    Hello { text: &'a str },
    /// To a client that logged in.
    Welcome {
        you: &'a User,
        room: &'a str,
        text: &'a str,
    },
    /// To a client that logged in, right after `welcome` and before any live message: the
    /// room's last messages, oldest first. Not sent when the history database fails.
    History { room: &'a str, messages: &'a [Said] },
    /// To a client that logged in: everyone in the room, sorted by name. From then on the
    /// page keeps the list itself from `join` and `leave`.
    Users { room: &'a str, users: &'a [User] },
    /// To the room: `user` entered (add it to the list).
    Join { user: &'a User },
    /// To the room: `user` left or closed the connection (drop it from the list; a member who
    /// logged in again under a new nickname keeps its id, so the name tells which entry).
    Leave { user: &'a User },
    /// A room message.
    Say { from: &'a User, text: &'a str },
    /// A private message, sent to its recipient and echoed to its sender.
    Whisper {
        from: &'a User,
        to: &'a User,
        text: &'a str,
    },
    /// A request was refused.
    Error { text: &'a str },
}

/// A person in a room, as the page shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct User {
    id: String,
    name: String,
}

/// A logged-in client: who it is and where, as its session says.
struct Member {
    user: User,
    room: String,
}

impl Member {
    /// The member a client is, if it has logged in.
    fn of(client: &Client) -> Option<Self> {
        from_session(&client.id, &client.session)
    }
}

/// Session keys: the nickname and the room of a logged-in client.
const NAME: &str = "name";
const ROOM: &str = "room";

fn from_session(id: &str, session: &[(String, String)]) -> Option<Member> {
    let get = |key: &str| {
        session
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    Some(Member {
        user: User {
            id: id.into(),
            name: get(NAME)?,
        },
        room: get(ROOM)?,
    })
}

/// The gateway group of a room.
fn group(room: &str) -> String {
    format!("room:{room}")
}

/// Longest nickname, room name and message, in characters.
const MAX_NAME: usize = 24;
const MAX_ROOM: usize = 32;
const MAX_TEXT: usize = 2000;

/// A nickname: trimmed, 1 to [`MAX_NAME`] characters, no control characters.
fn valid_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "a nickname is 1 to {MAX_NAME} characters, without control characters"
        ));
    }
    Ok(name)
}

/// A room name: 1 to [`MAX_ROOM`] letters, digits, `-` or `_`.
fn valid_room(room: &str) -> Result<&str, String> {
    let ok = (1..=MAX_ROOM).contains(&room.chars().count())
        && room
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "a room name is 1 to {MAX_ROOM} letters, digits, `-` or `_`"
        ));
    }
    Ok(room)
}

/// A message: not blank, at most [`MAX_TEXT`] characters.
fn valid_text(text: &str) -> Result<&str, String> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(format!("a message is 1 to {MAX_TEXT} characters"));
    }
    Ok(text)
}

fn login(client: &Client, name: &str, room: &str) -> Result<(), String> {
    let (name, room) = (valid_name(name)?, valid_room(room)?);
    let others = members(room, &client.id)?;
    if others.iter().any(|u| u.name.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "{name} is already in #{room}: pick another nickname"
        ));
    }
    // Its old uid goes offline when the new one is bound: the old room hears it left then.
    if let Some(before) = Member::of(client) {
        gateway::leave_group(&client.id, &group(&before.room)).map_err(failed)?;
    }
    let me = User {
        id: client.id.clone(),
        name: name.into(),
    };
    gateway::update_session(
        &client.id,
        &[(NAME.into(), name.into()), (ROOM.into(), room.into())],
    )
    .map_err(failed)?;
    gateway::bind_uid(&client.id, &member_uid(room, name)).map_err(failed)?;
    let users = with(others, &me);
    let text = match users.len() {
        1 => format!("Welcome to #{room}, {name}! You are the first one here."),
        2 => format!("Welcome to #{room}, {name}! One other person is here."),
        n => format!(
            "Welcome to #{room}, {name}! {} other people are here.",
            n - 1
        ),
    };
    send(
        &client.id,
        &Event::Welcome {
            you: &me,
            room,
            text: &text,
        },
    );
    // The history goes out before the client joins the room's group, so nothing said from
    // then on reaches it ahead of the history. A message said while the history is read can
    // show twice or not at all for the joiner: the price of reading and joining in two steps.
    match history::recent(room) {
        Ok(messages) => send(
            &client.id,
            &Event::History {
                room,
                messages: &messages,
            },
        ),
        Err(e) => log::warn(format!("no history for #{room}: {}", sql_error(&e))),
    }
    gateway::join_group(&client.id, &group(room)).map_err(failed)?;
    // The room reads it in the join; only the newcomer needs the whole list.
    to_room(room, &Event::Join { user: &me }, &client.id);
    send(
        &client.id,
        &Event::Users {
            room,
            users: &users,
        },
    );
    log::info(format!("{name} joined #{room}"));
    Ok(())
}

fn say(client: &Client, text: &str) -> Result<(), String> {
    let me = logged_in(client)?;
    let text = valid_text(text)?;
    let said = Said {
        name: me.user.name.clone(),
        text: text.into(),
        time: now_ms(),
    };
    // Stored before it is sent, so that whoever has seen it can find it in the history. The
    // room hears it even when storing fails: history is a convenience, chatting is the point.
    if let Err(e) = history::record(&me.room, &said) {
        log::warn(format!(
            "a message to #{} is not in the history: {}",
            me.room,
            sql_error(&e)
        ));
    }
    to_room(
        &me.room,
        &Event::Say {
            from: &me.user,
            text,
        },
        "",
    );
    Ok(())
}

fn whisper(client: &Client, to: &str, text: &str) -> Result<(), String> {
    let me = logged_in(client)?;
    let text = valid_text(text)?;
    let session = gateway::get_session(to).map_err(|e| format!("cannot reach {to}: {e:?}"))?;
    let recipient = session
        .and_then(|s| from_session(to, &s))
        .filter(|them| them.room == me.room)
        .ok_or_else(|| format!("nobody with id {to} is in #{}", me.room))?;
    let event = Event::Whisper {
        from: &me.user,
        to: &recipient.user,
        text,
    };
    send(to, &event);
    if to != client.id {
        send(&client.id, &event);
    }
    Ok(())
}

fn leave(client: &Client) -> Result<(), String> {
    let me = logged_in(client)?;
    gateway::leave_group(&client.id, &group(&me.room)).map_err(failed)?;
    // Unbound first: the room hears of the departure from presence.
    gateway::unbind_uid(&client.id, &member_uid(&me.room, &me.user.name)).map_err(failed)?;
    gateway::set_session(&client.id, &[]).map_err(failed)?;
    Ok(())
}

fn logged_in(client: &Client) -> Result<Member, String> {
    Member::of(client).ok_or_else(|| "log in first".into())
}

/// A member's uid: rooms have no `/`, so the nickname is what follows the first one.
fn member_uid(room: &str, name: &str) -> String {
    format!("{room}/{name}")
}

/// Tells `me`'s room that `me` left: its members drop `me` from their lists. No list is read
/// again: presence says once in the cluster who left.
fn announce_departure(me: &Member) {
    to_room(&me.room, &Event::Leave { user: &me.user }, &me.user.id);
}

/// Everyone in `room` as the gateways see it, except the client `except` (whose own change
/// may not have reached them yet), sorted by name.
fn members(room: &str, except: &str) -> Result<Vec<User>, String> {
    let sessions = gateway::get_client_sessions_by_group(&group(room)).map_err(failed)?;
    let mut users: Vec<User> = sessions
        .iter()
        .filter(|(id, _)| id != except)
        .filter_map(|(id, session)| from_session(id, session))
        .map(|member| member.user)
        .collect();
    users.sort_by_cached_key(sort_key);
    Ok(users)
}

/// `users` with `me` added, still sorted by name.
fn with(mut users: Vec<User>, me: &User) -> Vec<User> {
    let key = sort_key(me);
    let at = users.partition_point(|u| sort_key(u) < key);
    users.insert(at, me.clone());
    users
}

/// Lists are sorted by name, ignoring case.
fn sort_key(user: &User) -> String {
    user.name.to_lowercase()
}

/// Milliseconds since the Unix epoch, by the host's wall clock.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A database error for the log: its kind and the host's explanation.
fn sql_error(e: &wasmgate_sdk::sql::Error) -> String {
    format!("{} ({})", e.message(), e.kind())
}

/// What a user is told when a gateway operation failed.
fn failed(e: GatewayError) -> String {
    format!("the gateways did not answer: {e:?}")
}

/// Sends `event` to one client; one that left meanwhile is only logged.
fn send(id: &str, event: &Event<'_>) {
    if let Err(e) = json::send_to_client(id, event) {
        log::warn(format!("cannot send to {id}: {e}"));
    }
}

/// Sends `event` to everyone in `room` except the client `except` (`""`: nobody).
fn to_room(room: &str, event: &Event<'_>, except: &str) {
    let exclude: Vec<String> = [except]
        .into_iter()
        .filter(|e| !e.is_empty())
        .map(Into::into)
        .collect();
    if let Err(e) = json::send_to_group(&[group(room)], event, &exclude) {
        log::warn(format!("cannot send to #{room}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_json() {
        let parse = |s: &str| serde_json::from_str::<Request>(s);
        assert_eq!(
            parse(r#"{"type":"login","name":"Ada","room":"lobby"}"#).unwrap(),
            Request::Login {
                name: "Ada".into(),
                room: "lobby".into()
            }
        );
        assert_eq!(parse(r#"{"type":"leave"}"#).unwrap(), Request::Leave);
        assert!(parse(r#"{"type":"say"}"#).is_err());
        assert!(parse(r#"{"type":"say","text":"x","extra":1}"#).is_err());
        assert!(parse("say hi").is_err());
    }

    #[test]
    fn events_serialise_with_their_type() {
        let ada = User {
            id: "7f000001000000000001".into(),
            name: "Ada".into(),
        };
        let json = serde_json::to_string(&Event::Say {
            from: &ada,
            text: "hi",
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"say","from":{"id":"7f000001000000000001","name":"Ada"},"text":"hi"}"#
        );
    }

    #[test]
    fn history_serialises_oldest_first_with_names_and_times() {
        let said = |text: &str, time| Said {
            name: "Ada".into(),
            text: text.into(),
            time,
        };
        let messages = [said("first", 1), said("second", 2)];
        let json = serde_json::to_string(&Event::History {
            room: "lobby",
            messages: &messages,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"history","room":"lobby","messages":[{"name":"Ada","text":"first","time":1},{"name":"Ada","text":"second","time":2}]}"#
        );
    }

    #[test]
    fn names_rooms_and_texts_are_checked() {
        assert_eq!(valid_name("  Ada Lovelace "), Ok("Ada Lovelace"));
        assert!(valid_name(" ").is_err());
        assert!(valid_name("a\nb").is_err());
        assert!(valid_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert_eq!(valid_room("rust-lang_2"), Ok("rust-lang_2"));
        assert!(valid_room("").is_err());
        assert!(valid_room("a room").is_err());
        assert!(valid_room("a:b").is_err());
        assert!(valid_text(" \n").is_err());
        assert_eq!(valid_text(" hi "), Ok(" hi "));
    }

    #[test]
    fn sessions_make_members_and_lists_stay_sorted() {
        let session = |name: &str| {
            vec![
                (NAME.to_string(), name.to_string()),
                (ROOM.to_string(), "lobby".to_string()),
            ]
        };
        let member = from_session("c1", &session("Bob")).unwrap();
        assert_eq!(member.user.name, "Bob");
        assert_eq!(member.room, "lobby");
        assert!(from_session("c2", &[(NAME.into(), "Eve".into())]).is_none());

        let user = |name: &str| User {
            id: name.to_lowercase(),
            name: name.into(),
        };
        let users = with(vec![user("ada"), user("Cy")], &user("Bob"));
        let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ada", "Bob", "Cy"]);
    }
}
