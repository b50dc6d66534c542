//! Credentials for the HTTP port: a bearer token (an `Authorization: Bearer` header, which
//! Prometheus sends with `authorization.credentials`, or `?token=` for a browser tab) and/or
//! a basic-auth user and password. Compared in constant time.

use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{check, ConfigError};

/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// The `[http_auth]` table: who may read the HTTP port (all empty = anyone who reaches it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuth {
    /// Bearer token: `Authorization: Bearer TOKEN` or `?token=TOKEN`.
    pub token: Option<String>,
    /// Basic-auth user name (with `password`).
    pub user: Option<String>,
    /// Basic-auth password (with `user`).
    pub password: Option<String>,
}

impl HttpAuth {
    /// True when some credential is required.
    pub fn is_required(&self) -> bool {
        self.token.is_some() || self.user.is_some()
    }

    /// Checks the fields (errors name them as `http_auth.FIELD`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.token {
            check(
                "http_auth.token",
                t.len() >= MIN_TOKEN_LEN,
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            )?;
            // It travels in a query string and a header: keep it to characters neither
            // needs to escape.
            check(
                "http_auth.token",
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                "may hold only letters, digits and - . _ ~",
            )?;
        }
        check(
            "http_auth.user",
            self.user.is_some() == self.password.is_some(),
            "user and password go together",
        )?;
        if let Some(u) = &self.user {
            check(
                "http_auth.user",
                !u.is_empty() && !u.contains(':') && !u.chars().any(char::is_control),
                "must be non-empty, without ':' or control characters",
            )?;
        }
        if let Some(p) = &self.password {
            check(
                "http_auth.password",
                p.len() >= 8,
                "must be at least 8 characters",
            )?;
        }
        Ok(())
    }

    /// True when the request carries a configured credential (always, when none is).
    pub fn admits(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        if !self.is_required() {
            return true;
        }
        let header = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(token) = &self.token {
            let bearer = strip_scheme(header, "bearer");
            if bearer.is_some_and(|b| same(b, token))
                || query_token(query).is_some_and(|q| same(q, token))
            {
                return true;
            }
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            if let Some((u, p)) = strip_scheme(header, "basic").and_then(decode_basic) {
                // Both compared, so the time taken does not tell which one was wrong.
                return same(&u, user) & same(&p, password);
            }
        }
        false
    }

    /// The `WWW-Authenticate` challenges of a 401: basic first, so a browser asks for a
    /// user and password when those are configured.
    pub fn challenges(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.user.is_some() {
            c.push("Basic realm=\"tradeplex\", charset=\"UTF-8\"");
        }
        if self.token.is_some() {
            c.push("Bearer realm=\"tradeplex\"");
        }
        c
    }
}

/// The credentials after `scheme ` (case-insensitive scheme, as RFC 9110 says).
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn decode_basic(b64: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The `token` parameter of a query string (tokens need no percent-decoding: see
/// [`HttpAuth::validate`]).
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const TOKEN: &str = "0123456789abcdef-xyz";

    fn with_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn both() -> HttpAuth {
        HttpAuth {
            token: Some(TOKEN.into()),
            user: Some("ops".into()),
            password: Some("s3cret-pass".into()),
        }
    }

    #[test]
    fn nothing_configured_admits_everyone() {
        assert!(HttpAuth::default().admits(&HeaderMap::new(), None));
    }

    #[test]
    fn a_token_is_taken_from_the_header_or_the_query() {
        let a = both();
        assert!(a.admits(&with_header(&format!("Bearer {TOKEN}")), None));
        assert!(a.admits(&with_header(&format!("bearer {TOKEN}")), None));
        assert!(a.admits(&HeaderMap::new(), Some(&format!("x=1&token={TOKEN}"))));
        assert!(!a.admits(&HeaderMap::new(), None));
        assert!(!a.admits(&with_header("Bearer wrong"), Some("token=wrong")));
        assert!(!a.admits(&with_header(&format!("Bearer {TOKEN}x")), None));
    }

    #[test]
    fn basic_auth_needs_both_user_and_password() {
        let a = both();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(a.admits(
            &with_header(&format!("Basic {}", enc("ops:s3cret-pass"))),
            None
        ));
        assert!(!a.admits(&with_header(&format!("Basic {}", enc("ops:wrong"))), None));
        assert!(!a.admits(
            &with_header(&format!("Basic {}", enc("x:s3cret-pass"))),
            None
        ));
        assert!(!a.admits(&with_header("Basic !!!not-base64"), None));
    }

    #[test]
    fn weak_or_half_configured_credentials_are_refused() {
        let bad = [
            (
                HttpAuth {
                    token: Some("short".into()),
                    ..Default::default()
                },
                "http_auth.token",
            ),
            (
                HttpAuth {
                    token: Some("has space in it 0123".into()),
                    ..Default::default()
                },
                "http_auth.token",
            ),
            (
                HttpAuth {
                    user: Some("ops".into()),
                    ..Default::default()
                },
                "http_auth.user",
            ),
            (
                HttpAuth {
                    user: Some("a:b".into()),
                    password: Some("longenough".into()),
                    ..Default::default()
                },
                "http_auth.user",
            ),
            (
                HttpAuth {
                    user: Some("ops".into()),
                    password: Some("short".into()),
                    ..Default::default()
                },
                "http_auth.password",
            ),
        ];
        for (auth, field) in bad {
            let e = auth.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{auth:?}: {e}");
        }
        both().validate().unwrap();
        assert_eq!(both().challenges().len(), 2);
    }
}
