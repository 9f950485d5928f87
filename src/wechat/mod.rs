//! Everything that speaks WeChat: the HTTP client, the errcode table, the emulator.

pub mod client;
pub mod errcode;
pub mod mock;
