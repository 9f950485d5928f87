//! wxpush: delivers WeChat Mini Program subscribe messages from RabbitMQ events.
//!
//! The layout follows the path of a message (see `docs/architecture.md`):
//! - [`config`]: the TOML file, environment overrides, secrets, `check`;
//! - [`event`]: parsing and validating the events services publish;
//! - [`template`]: rendering an event into a subscribe message, WeChat's value rules;
//! - [`wechat`]: the HTTP client and the errcode table (what each answer means);
//! - [`token`]: the shared access_token: local copy, single-flight refresh, invalidation;
//! - [`store`]: everything kept in Redis: event claims, the token record and its lease, key
//!   names, the pooled and hot-path connections;
//! - [`broker`]: AMQP connection, topology, confirmed publishing, and the dead-letter
//!   headers ([`broker::dead_letter`]);
//! - [`dead_letters`]: reading, replaying and purging dead letters (CLI, API and console);
//! - [`worker`]: consume → decide (`handle`, `send`, `disposition`) → settle → ack;
//! - [`admin`]: health, readiness, metrics, the JSON API and the operator console;
//! - [`push`]: WeChat's message push received: grants and final delivery results;
//! - [`telemetry`]: logging setup and error chains for logs;
//! - [`cli`]: the `wxpush` commands;
//! - [`failpoint`]: named fault points for tests (nothing without the `failpoints` feature).
//!
//! The WeChat emulator (`crates/mock-wechat`) and the load harness (`crates/bench`) are
//! packages of their own: the production binary contains neither.
#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod event;
pub mod failpoint;
pub mod push;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod token;
pub mod wechat;
pub mod worker;
