//! The WeChat emulator the bench runs against: in-process (on its own runtime, so its CPU
//! can be told apart from the worker's) or a separately running emulator
//! (`wxpush-mock-wechat`, or `wxpush mock-wechat` in a developer build) reached through its
//! control API.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use wxpush_mock_wechat::{AcceptedSend, MockOptions, MockServer, MockStats};

/// Thread name prefix of the in-process emulator's runtime (see `probe::Cpu`).
pub const THREAD_NAME: &str = "wxb-mock";

pub enum Emulator {
    Local(Local),
    Remote {
        base: String,
        http: reqwest::Client,
        latency: Option<Duration>,
    },
}

pub struct Local {
    server: Option<MockServer>,
    runtime: Option<tokio::runtime::Runtime>,
    base: String,
    latency: Duration,
}

impl Drop for Local {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime blocks, which is not allowed inside async code.
            rt.shutdown_background();
        }
    }
}

impl Emulator {
    /// Starts an in-process emulator keeping `record` sends, or connects to `url`.
    pub async fn start(
        url: Option<&str>,
        latency: Option<Duration>,
        record: usize,
    ) -> anyhow::Result<Emulator> {
        if let Some(url) = url {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let base = url.trim_end_matches('/').to_owned();
            let emulator = Emulator::Remote {
                base,
                http,
                latency,
            };
            // Reached first, so a wrong URL is told as such rather than as a failed setting.
            emulator.stats().await.with_context(|| {
                format!(
                    "no WeChat emulator answering at {url} (GET /mock/stats); start one with \
                     `cargo run --release -p wxpush-mock-wechat -- --listen 127.0.0.1:8088`, \
                     or leave out --mock-url for an in-process one"
                )
            })?;
            if let Some(latency) = latency {
                emulator
                    .control("latency", json!({"ms": latency.as_millis() as u64}))
                    .await?;
            }
            return Ok(emulator);
        }
        let latency = latency.unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .context("cannot start the emulator's runtime")?;
        let options = MockOptions {
            latency,
            max_recorded_sends: record,
            ..MockOptions::default()
        };
        let server = runtime
            .spawn(MockServer::start(options, ([127, 0, 0, 1], 0).into()))
            .await?
            .context("cannot start the WeChat emulator")?;
        Ok(Emulator::Local(Local {
            base: server.base_url(),
            server: Some(server),
            runtime: Some(runtime),
            latency,
        }))
    }

    pub fn base_url(&self) -> String {
        match self {
            Emulator::Local(l) => l.base.clone(),
            Emulator::Remote { base, .. } => base.clone(),
        }
    }

    /// The latency the emulator adds, when known.
    pub fn latency(&self) -> Option<Duration> {
        match self {
            Emulator::Local(l) => Some(l.latency),
            Emulator::Remote { latency, .. } => *latency,
        }
    }

    fn server(&self) -> Option<&MockServer> {
        match self {
            Emulator::Local(l) => l.server.as_ref(),
            Emulator::Remote { .. } => None,
        }
    }

    async fn control(&self, what: &str, body: serde_json::Value) -> anyhow::Result<()> {
        if let Emulator::Remote { base, http, .. } = self {
            http.post(format!("{base}/mock/{what}"))
                .json(&body)
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("POST {base}/mock/{what}"))?;
        }
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, what: &str) -> anyhow::Result<T> {
        let Emulator::Remote { base, http, .. } = self else {
            anyhow::bail!("not a remote emulator");
        };
        Ok(http
            .get(format!("{base}/mock/{what}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn register_app(&self, appid: &str, secret: &str) -> anyhow::Result<()> {
        match self.server() {
            Some(s) => {
                s.register_app(appid, secret);
                Ok(())
            }
            None => {
                self.control("apps", json!({"appid": appid, "secret": secret}))
                    .await
            }
        }
    }

    pub async fn stats(&self) -> anyhow::Result<MockStats> {
        match self.server() {
            Some(s) => Ok(s.stats()),
            None => self.get("stats").await,
        }
    }

    /// The sends the emulator recorded (all of this run's, unless a remote one was asked to
    /// keep fewer than 100,000).
    pub async fn sends(&self) -> anyhow::Result<Vec<AcceptedSend>> {
        match self.server() {
            Some(s) => Ok(s.sends()),
            None => self.get("sends").await,
        }
    }

    pub async fn shutdown(self) {
        if let Emulator::Local(mut local) = self
            && let Some(server) = local.server.take()
        {
            server.shutdown().await;
        }
    }
}
