//! wxpush: delivers WeChat Mini Program subscribe messages from RabbitMQ events.
//!
//! The layout follows the path of a message:
//! - [`config`]: the TOML file, environment overrides, secrets, `check`;
//! - [`event`]: parsing and validating the events services publish;
//! - [`template`]: rendering an event into a subscribe message, WeChat's value rules;
//! - [`wechat`]: the HTTP client, the errcode classification table, the emulator;
//! - [`token`]: the shared access_token in Redis and its refresh lock;
//! - [`broker`]: AMQP connection, topology and confirmed publishing;
//! - [`worker`]: consume, send, retry, dead-letter;
//! - [`admin`]: health, readiness and metrics;
//! - [`cli`]: the `wxpush` commands.
#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod event;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod token;
pub mod wechat;
pub mod worker;
