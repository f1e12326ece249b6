//! Who may connect and how hard they may push: tokens ([`auth`]), browser origins
//! ([`origin`]), and per-client limits ([`limits`]); and how the backend knows a request came
//! from rollcall ([`signature`]). Leaves: nothing here knows the socket machine or the
//! transports, which apply these checks.

pub mod auth;
pub mod limits;
pub mod origin;
pub mod signature;
