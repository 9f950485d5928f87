//! Who may use `/api/*` and the console: the holder of the admin bearer token
//! (`admin.token_env` / `token_file`), compared in constant time, or a console session
//! opened with it. Without a configured token the API and the console are open only on a
//! loopback listener, where only this machine can reach them; on any other listener they
//! are off.
//!
//! A console session is a random id in an HttpOnly, SameSite=Strict cookie, kept in memory
//! for [`SESSION_TTL`]; each has a CSRF token of its own, which every state-changing request
//! made with the cookie must carry (a form field, or the `X-CSRF-Token` header): 403
//! without it. Bearer-token calls need none (a browser never adds that header by itself).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The console's session cookie.
pub const COOKIE: &str = "wxpush_session";
/// How long a console session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The header a cookie-authenticated API call carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at most; the oldest goes first (logins are rare; this bounds memory).
const MAX_SESSIONS: usize = 10_000;

/// A random token: 244 bits from the OS's generator (two v4 UUIDs), hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Open console sessions: id → (CSRF token, expiry).
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// Opens a session; returns its id (for the cookie).
    pub fn open(&self) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, (_, expires)| *expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), (random_token(), now + SESSION_TTL));
        id
    }

    /// The CSRF token of the session the request's cookie names, if it is open.
    pub fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_id(headers)?;
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Constant time over the candidates would not hide more than the map lookup does;
        // the id is 244 random bits, which is what protects it.
        open.get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(csrf, _)| csrf.clone())
    }

    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
    }
}

/// The session id in the request's cookie.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
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
    pub fn authorize(
        &self,
        sessions: &Sessions,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), (StatusCode, &'static str)> {
        if matches!(self, Access::Off) || headers.contains_key(header::AUTHORIZATION) {
            return self.check(headers);
        }
        match sessions.csrf(headers) {
            Some(csrf) if changes_state(method) => {
                let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
                if csrf_ok(&csrf, given) {
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
    pub fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
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
        let sessions = Sessions::default();
        let id = sessions.open();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={id}").parse().unwrap(),
        );
        let csrf = sessions.csrf(&headers).expect("open");
        assert!(access.authorize(&sessions, &Method::GET, &headers).is_ok());
        let refused = access.authorize(&sessions, &Method::POST, &headers);
        assert_eq!(refused.unwrap_err().0, StatusCode::FORBIDDEN);
        headers.insert(CSRF_HEADER, csrf.parse().unwrap());
        assert!(access.authorize(&sessions, &Method::POST, &headers).is_ok());
        sessions.close(&headers);
        let closed = access.authorize(&sessions, &Method::GET, &headers);
        assert_eq!(closed.unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(access.password_ok("s3cret") && !access.password_ok("s3cre"));
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
