#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod presence;
#[cfg(feature = "std")]
pub mod protocol;
#[cfg(feature = "std")]
pub mod tracker;
