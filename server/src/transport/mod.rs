//! Transports carry frames between a client and its [`socket`](crate::socket) machine:
//! [`websocket`] and [`longpoll`]. Both admit a connection through
//! [`admission`](crate::admission), run the same machine, and hand it
//! [`FromClient`](crate::frame::FromClient) items; what they share beyond that is here.

pub mod longpoll;
pub mod websocket;

use base64::Engine;

/// Decodes base64 leniently: standard or URL-safe alphabet, with or without padding (phoenix.js
/// sends its auth token URL-safe, and long-poll binary lines standard).
pub fn decode_lenient_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}
