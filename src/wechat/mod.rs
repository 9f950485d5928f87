//! Everything that speaks WeChat: the HTTP client, the errcode table, the emulator.

pub mod errcode;
pub mod mock;
