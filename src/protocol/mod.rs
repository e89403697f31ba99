//! The PostgreSQL wire protocol as pgshard needs it: framing, the few messages it
//! inspects, and builders for the messages it synthesizes. No I/O happens here.
//!
//! Architecture invariant: decoding distinguishes "need more bytes" (`Ok(None)`) from
//! "malformed" (`Err`), and never panics on any input.

pub mod frame;
pub mod messages;
pub mod startup;

pub use frame::{next_frame, FrameError, FrameInfo};
