//! Turning an event into a subscribe message: placeholders, filters, WeChat's value rules.

pub mod pattern;
pub mod render;
pub mod rules;
