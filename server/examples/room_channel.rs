//! The `RoomChannel` of Phoenix's Presence guide, on rollcall's channel handlers: anyone may
//! join `room:lobby` (other rooms are private), and once joined the channel pushes the room's
//! presence list and tracks the user with `online_at`. A `new_msg` is broadcast to the room.
//! The official phoenix client talks to it unchanged (`npm/test/interop-room-channel.test.mjs`).
//!
//! ```sh
//! cargo run -p rollcall-server --example room_channel            # port 4000
//! cargo run -p rollcall-server --example room_channel -- --port 0
//! ```
//!
//! The Elixir it mirrors:
//!
//! ```elixir
//! def join("room:lobby", _params, socket) do
//!   send(self(), :after_join)
//!   {:ok, socket}
//! end
//! def join("room:" <> _private, _params, _socket), do: {:error, %{reason: "unauthorized"}}
//!
//! def handle_info(:after_join, socket) do
//!   {:ok, _} = Presence.track(socket, socket.assigns.user_id, %{
//!     online_at: inspect(System.system_time(:second))
//!   })
//!   push(socket, "presence_state", Presence.list(socket))
//!   {:noreply, socket}
//! end
//!
//! def handle_in("new_msg", %{"body" => body}, socket) do
//!   broadcast!(socket, "new_msg", %{body: body, user: socket.assigns.user_id})
//!   {:noreply, socket}
//! end
//! ```

use rollcall_server::handler::{Channel, ChannelSocket, Joined, Refusal, Reply};
use rollcall_server::{Config, Payload, Server};
use serde_json::{json, Value};

struct RoomChannel;

impl Channel for RoomChannel {
    async fn join(
        &self,
        topic: &str,
        _params: &Value,
        _socket: &mut ChannelSocket,
    ) -> Result<Joined, Refusal> {
        if topic != "room:lobby" {
            return Err(Refusal::new("unauthorized"));
        }
        let online_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The key is the socket's user (the token's `sub`, or the `user_id` param in open mode).
        // `presence_state` goes out after the join reply and before any diff that follows it.
        Ok(Joined::new()
            .presence_state()
            .track(json!({"online_at": online_at.to_string()})))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &mut ChannelSocket) -> Reply {
        match (event, payload.as_json().and_then(|p| p.get("body"))) {
            ("new_msg", Some(body)) => {
                let message = json!({"body": body, "user": socket.key()});
                match socket.broadcast("new_msg", message) {
                    Ok(()) => Reply::none(),
                    Err(e) => Reply::error(json!({"reason": e.to_string()})),
                }
            }
            ("new_msg", None) => Reply::error(json!({"reason": "new_msg needs a body"})),
            _ => Reply::error(json!({"reason": "unknown event"})),
        }
    }
}

/// `--port N` from the command line (default 4000).
fn port() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = Config {
        // Only the RoomChannel: no built-in presence rooms, no demo page.
        rooms: Vec::new(),
        static_dir: None,
        ..Config::default()
    };
    let server = Server::builder(config)
        .channel("room:*", RoomChannel)
        .build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port())).await?;
    // The same line `rollcall serve` prints; scripts and tests read it to learn the port.
    println!("rollcall listening on http://{}", listener.local_addr()?);
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
