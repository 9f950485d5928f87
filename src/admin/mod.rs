//! Operator-facing HTTP: `/healthz`, `/readyz` and `/metrics`.

pub mod metrics;
