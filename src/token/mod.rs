//! The shared access_token: one per app, kept in Redis, refreshed by one worker at a time.
//!
//! `store.rs` is the token store (local copy, Redis copy, single-flight refresh, stale-token
//! invalidation); `lock.rs` is the Redis lease the refresh runs under.

pub mod lock;
mod store;

pub use store::{TokenError, TokenInfo, TokenSource, TokenStore, now_ms};
