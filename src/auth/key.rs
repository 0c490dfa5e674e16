use std::fmt;
use std::sync::Arc;

use crate::id::UserId;

use http::{header, HeaderMap};

/// The longest key accepted, so a hostile header cannot make hashing expensive.
const MAX_KEY_LEN: usize = 256;

/// An API key as presented by a client. `Debug` prints no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Accepts 1 to 256 visible ASCII characters; anything else is not a key.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_KEY_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| ApiKey(raw.to_owned()))
    }

    /// Reads the key from `Authorization: Bearer <key>`, or else from `x-api-key`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            return if scheme.eq_ignore_ascii_case("bearer") {
                ApiKey::parse(token.trim_matches(' '))
            } else {
                None
            };
        }
        let value = headers.get("x-api-key")?.to_str().ok()?;
        ApiKey::parse(value.trim_matches(' '))
    }

    /// The secret itself; call only to hash or to forward it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Who is calling: put into the request extensions by the auth layer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The account that owns files and generations and pays for edits.
    pub user_id: UserId,
    /// The managed key the request came with and its limits; `None` for a key with no
    /// limits of its own (a configured key, your own store's).
    pub key: Option<Arc<super::KeyGrant>>,
}

impl Principal {
    /// A principal for the given user.
    pub fn new(user_id: UserId) -> Self {
        Principal { user_id, key: None }
    }

    /// The principal of a managed key, whose limits the gateway enforces.
    pub fn with_grant(mut self, grant: super::KeyGrant) -> Self {
        self.key = Some(Arc::new(grant));
        self
    }

    /// The caller's user id.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The principal the auth layer put into a request's extensions; `401` without one.
    pub fn of_request(extensions: &http::Extensions) -> Result<Principal, crate::GatewayError> {
        extensions
            .get::<Principal>()
            .cloned()
            .ok_or(crate::GatewayError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_and_x_api_key() {
        let k = ApiKey::from_headers(&headers(&[("authorization", "Bearer pk_1")])).unwrap();
        assert_eq!(k.expose(), "pk_1");
        let k = ApiKey::from_headers(&headers(&[("authorization", "bearer  pk_2")])).unwrap();
        assert_eq!(k.expose(), "pk_2");
        let k = ApiKey::from_headers(&headers(&[("x-api-key", "pk_3")])).unwrap();
        assert_eq!(k.expose(), "pk_3");
    }

    #[test]
    fn malformed_headers_give_no_key() {
        assert!(ApiKey::from_headers(&headers(&[])).is_none());
        assert!(ApiKey::from_headers(&headers(&[("authorization", "Basic abc")])).is_none());
        assert!(ApiKey::from_headers(&headers(&[("authorization", "Bearer")])).is_none());
        assert!(ApiKey::from_headers(&headers(&[("authorization", "Bearer a b")])).is_none());
        assert!(ApiKey::from_headers(&headers(&[("x-api-key", "")])).is_none());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(ApiKey::from_headers(&headers(&[("x-api-key", &long)])).is_none());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ApiKey::parse("pk_live_supersecret").unwrap();
        assert!(!format!("{key:?}").contains("supersecret"));
    }

    #[test]
    fn user_id_alphabet() {
        assert!(UserId::new("alice_01-x").is_ok());
        for bad in ["", "a/b", "..", "a.b", "ü", &"a".repeat(65)] {
            assert!(UserId::new(bad).is_err(), "{bad:?}");
        }
    }
}
