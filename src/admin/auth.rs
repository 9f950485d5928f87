//! Who may use `/api/*` (and, later, the console): the holder of the admin bearer token
//! (`admin.token_env` / `token_file`), compared in constant time. Without a configured token
//! the API is open only on a loopback listener, where only this machine can reach it; on
//! any other listener it is off.

use axum::http::{HeaderMap, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

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
