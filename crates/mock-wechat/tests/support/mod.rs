//! What the emulator's HTTP tests share: an emulator on a free port, a client making
//! WeChat's calls and the control API's to it, and the app and user those calls name.

// Each test file is a crate of its own that uses only part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use wxpush_mock_wechat::{MockOptions, MockServer};

pub const OPENID: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";
pub const APPID: &str = "wx0123456789abcdef";
pub const SECRET: &str = "secret";
pub const SEND_PATH: &str = "/cgi-bin/message/subscribe/send";

/// An emulator on a port the OS picks, so that tests running in parallel never collide.
pub async fn emulator(opts: MockOptions) -> MockServer {
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MockServer::start(opts, any_port).await.unwrap()
}

pub struct Api {
    pub server: MockServer,
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn start(opts: MockOptions) -> Api {
        let server = emulator(opts).await;
        Api {
            base: server.base_url(),
            server,
            http: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        answer(self.http.get(format!("{}{path}", self.base)).query(query)).await
    }

    pub async fn post(&self, path: &str, query: &[(&str, &str)], body: &Value) -> Value {
        let req = self.http.post(format!("{}{path}", self.base));
        answer(req.query(query).json(body)).await
    }

    /// Posts `body` as it is, for the malformed bodies a JSON value cannot hold.
    pub async fn post_raw(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &str,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .query(query)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn classic(&self, appid: &str, secret: &str) -> Value {
        let query = [
            ("grant_type", "client_credential"),
            ("appid", appid),
            ("secret", secret),
        ];
        self.get("/cgi-bin/token", &query).await
    }

    pub async fn stable(&self, appid: &str, secret: &str, force_refresh: bool) -> Value {
        let body = json!({
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret,
            "force_refresh": force_refresh,
        });
        self.post("/cgi-bin/stable_token", &[], &body).await
    }

    /// The stable token of [`APPID`], the one a worker would fetch.
    pub async fn token(&self) -> String {
        token_of(&self.stable(APPID, SECRET, false).await)
    }

    /// A send without a token when `token` is `None`, to reach the token checks.
    pub async fn send_raw(&self, token: Option<&str>, body: &str) -> reqwest::Response {
        let query = token.map(|token| ("access_token", token));
        self.post_raw(SEND_PATH, query.as_slice(), body).await
    }

    pub async fn send(&self, token: &str, body: &Value) -> Value {
        self.post(SEND_PATH, &[("access_token", token)], body).await
    }

    pub async fn jscode(&self, appid: &str, secret: &str, code: &str) -> Value {
        let query = [
            ("appid", appid),
            ("secret", secret),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ];
        self.get("/sns/jscode2session", &query).await
    }

    pub async fn gettemplate(&self, token: &str) -> Value {
        let query = [("access_token", token)];
        self.get("/wxaapi/newtmpl/gettemplate", &query).await
    }

    pub async fn quota(&self, token: &str, cgi_path: &str) -> Value {
        let body = json!({"cgi_path": cgi_path});
        let query = [("access_token", token)];
        self.post("/cgi-bin/openapi/quota/get", &query, &body).await
    }

    pub async fn clear_quota(&self, token: &str, appid: &str) -> Value {
        let body = json!({"appid": appid});
        let query = [("access_token", token)];
        self.post("/cgi-bin/clear_quota", &query, &body).await
    }

    /// The control API answers 400 to what it cannot apply, so the status is part of the
    /// answer.
    pub async fn control(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/mock/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn control_get(&self, path: &str) -> Value {
        self.get(&format!("/mock/{path}"), &[]).await
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

pub fn token_of(answer: &Value) -> String {
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer}"))
        .to_owned()
}

/// WeChat leaves `errcode` out of some successful answers, so a missing one is 0.
pub fn errcode(answer: &Value) -> i64 {
    answer["errcode"].as_i64().unwrap_or(0)
}

/// A missing `errmsg` reads as empty, which no expected prefix matches.
pub fn errmsg(answer: &Value) -> &str {
    answer["errmsg"].as_str().unwrap_or("")
}
