//! Everything that speaks WeChat: the HTTP client and the errcode table (the emulator is the `wxpush-mock-wechat` package).

pub mod client;
pub mod errcode;
