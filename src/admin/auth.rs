//! Who may use `/api/*` and the console: the holder of the admin bearer token
//! (`admin.token_env` / `token_file`), compared in constant time, or a console session
//! opened with it. Without a configured token the API and the console are open only on a
//! loopback listener, where only this machine can reach them; on any other listener they
//! are off.
//!
//! A console session is a random id in an HttpOnly, SameSite=Strict cookie, kept in Redis
//! (the worker's, under `redis.key_prefix`) for [`SESSION_TTL`], so every replica behind a
//! load balancer knows it: no session affinity needed. Each has a CSRF token of its own,
//! which every state-changing request made with the cookie must carry (a form field, or the
//! `X-CSRF-Token` header): 403 without it. Bearer-token calls need none (a browser never
//! adds that header by itself), and they never touch Redis, so they keep working while
//! Redis is down; a request with the cookie then gets a 503 naming Redis.

use axum::http::{HeaderMap, Method, StatusCode, header};
use deadpool_redis::redis;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::store::{HotPath, Keys, StoreError};
use crate::telemetry::ErrorChain;

/// The console's session cookie.
pub const COOKIE: &str = "wxpush_session";
/// How long a console session lasts after login.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// The header a cookie-authenticated API call carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// What a request with the session cookie is told while Redis, where sessions live, fails.
pub const REDIS_DOWN: &str = "Redis is unavailable, and console sessions are kept there: try again once it is back (the /readyz page says when), or call the API with the bearer token (Authorization: Bearer <admin token>), which needs no Redis";

/// A refused request: the status and why (also logged).
pub type Refusal = (StatusCode, &'static str);

/// A random token: 244 bits from the OS's generator (two v4 UUIDs), hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Open console sessions, in Redis: one key each, `{prefix}:console:session:<SHA-1 of the
/// id, hex>`, holding the session's CSRF token and expiring after [`SESSION_TTL`]. The key
/// names a digest of the id, not the id, so whoever can read Redis still cannot present a
/// session's cookie. One key per command: fine in every `redis.mode`, a cluster included.
#[derive(Clone)]
pub struct Sessions {
    redis: HotPath,
    keys: Keys,
}

impl Sessions {
    pub fn new(redis: HotPath, keys: Keys) -> Sessions {
        Sessions { redis, keys }
    }

    fn key(&self, id: &str) -> String {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.keys.console_session(&hex)
    }

    /// Opens a session; returns its id (for the cookie).
    pub async fn open(&self) -> Result<String, StoreError> {
        let (id, csrf) = (random_token(), random_token());
        let key = self.key(&id);
        self.redis
            .run("console session open", async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&csrf)
                    .arg("EX")
                    .arg(SESSION_TTL.as_secs())
                    .query_async::<()>(c)
                    .await
            })
            .await?;
        Ok(id)
    }

    /// The CSRF token of the session the request's cookie names, if it is open (`None`
    /// without a cookie: then Redis is not asked).
    pub async fn csrf(&self, headers: &HeaderMap) -> Result<Option<String>, StoreError> {
        let Some(id) = session_id(headers) else {
            return Ok(None);
        };
        let key = self.key(id);
        self.redis
            .run("console session read", async |c| {
                redis::cmd("GET").arg(&key).query_async(c).await
            })
            .await
    }

    /// Ends the session the request's cookie names, on every replica.
    pub async fn close(&self, headers: &HeaderMap) -> Result<(), StoreError> {
        let Some(id) = session_id(headers) else {
            return Ok(());
        };
        let key = self.key(id);
        self.redis
            .run("console session close", async |c| {
                redis::cmd("DEL").arg(&key).query_async::<()>(c).await
            })
            .await
    }
}

/// The session id in the request's cookie (an empty one is none).
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
}

/// Logs a failed session lookup and says what the request is answered.
pub fn redis_down(e: &StoreError) -> Refusal {
    tracing::warn!(error = %ErrorChain(e), "console session: Redis unavailable");
    (StatusCode::SERVICE_UNAVAILABLE, REDIS_DOWN)
}

/// The `Set-Cookie` value for a new session (`Secure` when the request came over HTTPS
/// through a proxy that says so).
pub fn session_cookie(id: &str, headers: &HeaderMap) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether `given` is the session's CSRF token (constant time).
pub fn csrf_ok(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

/// Whether a request of this method changes state (and so needs the CSRF token).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// How `/api/*` is guarded.
#[derive(Clone)]
pub enum Access {
    /// A bearer token is required.
    Token(SecretString),
    /// No token configured, and the listener is loopback: open.
    LoopbackOnly,
    /// No token configured on a reachable listener: the API is off.
    Off,
}

impl Access {
    pub fn new(token: Option<SecretString>, listen: std::net::SocketAddr) -> Access {
        match token {
            Some(token) => Access::Token(token),
            None if listen.ip().is_loopback() => Access::LoopbackOnly,
            None => Access::Off,
        }
    }

    /// Whether the console's login takes this password.
    pub fn password_ok(&self, given: &str) -> bool {
        match self {
            Access::Token(expected) => {
                bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes()))
            }
            Access::LoopbackOnly => true,
            Access::Off => false,
        }
    }

    /// `Ok` when an API request may go on: a bearer token when it carries one, else a
    /// console session (with its CSRF token when it changes state), else the loopback rule.
    /// Redis is asked only for a request with the session cookie.
    pub async fn authorize(
        &self,
        sessions: &Sessions,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if matches!(self, Access::Off) || headers.contains_key(header::AUTHORIZATION) {
            return self.check(headers);
        }
        let csrf = sessions.csrf(headers).await.map_err(|e| redis_down(&e))?;
        self.with_session(csrf.as_deref(), method, headers)
    }

    /// [`Access::authorize`] once the session is known: `csrf` is the CSRF token of the
    /// request's open session, if it has one.
    fn with_session(
        &self,
        csrf: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        match csrf {
            Some(csrf) if changes_state(method) => {
                let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
                if csrf_ok(csrf, given) {
                    Ok(())
                } else {
                    Err((
                        StatusCode::FORBIDDEN,
                        "a request with the console's session cookie that changes state must carry its CSRF token (X-CSRF-Token)",
                    ))
                }
            }
            Some(_) => Ok(()),
            None => self.check(headers),
        }
    }

    /// `Ok` when the request may go on; else the status and the reason (also logged).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        match self {
            Access::LoopbackOnly => Ok(()),
            Access::Off => Err((
                StatusCode::FORBIDDEN,
                "the admin API is off: admin.listen is not loopback and no admin token is set (set admin.token_env or admin.token_file)",
            )),
            Access::Token(expected) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or((
                        StatusCode::UNAUTHORIZED,
                        "missing bearer token (Authorization: Bearer <admin token>)",
                    ))?;
                if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
                    Ok(())
                } else {
                    Err((StatusCode::UNAUTHORIZED, "wrong admin token"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_token_is_required_when_configured() {
        let access = Access::new(
            Some(SecretString::from("s3cret")),
            "0.0.0.0:9464".parse().unwrap(),
        );
        assert!(access.check(&with_auth("Bearer s3cret")).is_ok());
        for bad in ["Bearer s3cre", "Bearer s3cret ", "Basic s3cret", "s3cret"] {
            assert_eq!(
                access.check(&with_auth(bad)).unwrap_err().0,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }
        assert_eq!(
            access.check(&HeaderMap::new()).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_session_cookie_needs_the_csrf_token_to_change_state() {
        let access = Access::new(
            Some(SecretString::from("s3cret")),
            "0.0.0.0:9464".parse().unwrap(),
        );
        let mut headers = HeaderMap::new();
        let csrf = Some("the-csrf-token");
        assert!(access.with_session(csrf, &Method::GET, &headers).is_ok());
        let refused = access.with_session(csrf, &Method::POST, &headers);
        assert_eq!(refused.unwrap_err().0, StatusCode::FORBIDDEN);
        headers.insert(CSRF_HEADER, "the-csrf-token".parse().unwrap());
        assert!(access.with_session(csrf, &Method::POST, &headers).is_ok());
        let closed = access.with_session(None, &Method::GET, &headers);
        assert_eq!(closed.unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(access.password_ok("s3cret") && !access.password_ok("s3cre"));
    }

    #[test]
    fn the_session_id_comes_from_its_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_id(&headers), None);
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}=abc; c=d").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some("abc"));
        headers.insert(header::COOKIE, format!("{COOKIE}=").parse().unwrap());
        assert_eq!(
            session_id(&headers),
            None,
            "a cleared cookie names no session"
        );
    }

    /// Sessions on a Redis that is not there: nothing listens on port 1.
    fn sessions_without_redis() -> Sessions {
        let config = crate::config::RedisConfig {
            url: "redis://127.0.0.1:1".into(),
            ..crate::config::RedisConfig::default()
        };
        Sessions::new(HotPath::new(&config).unwrap(), Keys::new("t-auth"))
    }

    #[tokio::test]
    async fn without_redis_a_session_is_refused_with_503_and_the_bearer_token_still_works() {
        let access = Access::new(
            Some(SecretString::from("s3cret")),
            "0.0.0.0:9464".parse().unwrap(),
        );
        let sessions = sessions_without_redis();
        let opened = sessions.open().await;
        assert!(opened.unwrap_err().to_string().contains("Redis"));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("{COOKIE}=abc").parse().unwrap());
        let (status, why) = access
            .authorize(&sessions, &Method::GET, &headers)
            .await
            .unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("Redis is unavailable"), "{why}");
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        let bearer = access.authorize(&sessions, &Method::POST, &headers).await;
        assert!(bearer.is_ok(), "{bearer:?}");
        let neither = access
            .authorize(&sessions, &Method::GET, &HeaderMap::new())
            .await;
        assert_eq!(neither.unwrap_err().0, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn without_a_token_only_loopback_is_open() {
        let open = Access::new(None, "127.0.0.1:9464".parse().unwrap());
        assert!(open.check(&HeaderMap::new()).is_ok());
        let off = Access::new(None, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(
            off.check(&with_auth("Bearer x")).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
