//! The built-in presence room, as a [`Channel`] like any other: the join payload
//! `{"meta": {...}, "track": bool}` tracks the joiner (unless `track` is false) after pushing
//! `presence_state`; `track` replaces the meta, `untrack` stops listing; any other event is
//! relayed to the other members. The rules of the payloads are in [`crate::channel`].

use rollcall_core::protocol::Payload;
use serde_json::{json, Map, Value};

use super::{Channel, ChannelSocket, Joined, Refusal, Reply};
use crate::channel::{self, PolicyError, EVENT_TRACK, EVENT_UNTRACK};
use crate::metrics::JoinRefusal;

/// The presence room served on `--rooms` topics.
#[derive(Debug, Clone, Copy)]
pub struct PresenceRoom {
    /// Largest meta (serialized JSON) a client may send, in bytes.
    pub max_meta_size: usize,
}

impl Default for PresenceRoom {
    fn default() -> Self {
        PresenceRoom {
            max_meta_size: crate::config::Config::default().max_meta_size,
        }
    }
}

/// When the channel was first listed since its last untrack (unix seconds): the `online_at`
/// of its metas, kept across meta updates.
#[derive(Debug, Clone, Copy)]
struct OnlineAt(u64);

impl PresenceRoom {
    /// `meta` with this channel's `online_at`, which the first track sets.
    fn with_online_at(socket: &mut ChannelSocket, mut meta: Map<String, Value>) -> Value {
        let online_at = match socket.assigns::<OnlineAt>() {
            Some(OnlineAt(at)) => *at,
            None => {
                let now = crate::security::auth::unix_now();
                socket.assign(OnlineAt(now));
                now
            }
        };
        meta.insert("online_at".into(), Value::from(online_at));
        Value::Object(meta)
    }
}

fn refuse(e: PolicyError) -> Refusal {
    let mut refusal = Refusal::new(e.reason());
    refusal.why = JoinRefusal::BadPayload;
    refusal
}

fn error(e: PolicyError) -> Reply {
    Reply::error(json!({"reason": e.reason()}))
}

impl Channel for PresenceRoom {
    async fn join(
        &self,
        _topic: &str,
        params: &Value,
        socket: &mut ChannelSocket,
    ) -> Result<Joined, Refusal> {
        let room = channel::parse_room_join(params, self.max_meta_size).map_err(refuse)?;
        let joined = Joined::new().presence_state();
        if !room.track {
            return Ok(joined);
        }
        Ok(joined.track(PresenceRoom::with_online_at(socket, room.meta)))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &mut ChannelSocket) -> Reply {
        match event {
            EVENT_TRACK => {
                let meta = match &payload {
                    Payload::Json(meta) => channel::parse_meta(meta, self.max_meta_size),
                    Payload::Binary(_) => Err(PolicyError::BinaryPayload),
                };
                match meta {
                    Ok(meta) => {
                        let meta = PresenceRoom::with_online_at(socket, meta);
                        match socket.track(meta) {
                            Ok(()) => Reply::ok(json!({})),
                            Err(_) => error(PolicyError::MetaNotObject),
                        }
                    }
                    Err(e) => error(e),
                }
            }
            EVENT_UNTRACK => {
                socket.untrack();
                // The next track is a new listing, with a new time.
                socket.unassign::<OnlineAt>();
                Reply::ok(json!({}))
            }
            event => match channel::check_relay_event(event) {
                Ok(()) => match socket.broadcast_from(event, payload) {
                    Ok(()) => Reply::ok(json!({})),
                    Err(_) => error(PolicyError::ReservedEvent),
                },
                Err(e) => error(e),
            },
        }
    }
}
