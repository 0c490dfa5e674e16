//! Authentication: every request carries an API key, or it is answered 401.
//!
//! [`AuthLayer`] reads the key from `Authorization: Bearer <key>` or `x-api-key: <key>`,
//! asks a [`KeyStore`] whose key it is, and puts the resulting [`Principal`] into the request
//! extensions for the layers inside. A missing, malformed or unknown key is answered
//! `401 invalid_api_key` in the OpenAI envelope, and the inner service is never called.
//!
//! # Secrecy
//! A key is held as an [`ApiKey`], whose `Debug` prints no secret, and it never appears in an
//! error message or a log line. [`StaticKeys`] keeps only SHA-256 digests of the keys it was
//! given and compares digests in constant time.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use image_gateway::auth::{AuthLayer, Principal, StaticKeys};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys = StaticKeys::new().with_key("alice", "pk_live_alice_secret").unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(AuthLayer::new(keys))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         let who = req.extensions().get::<Principal>().unwrap().user_id().to_string();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from(who)))
//!     }));
//!
//! let anonymous = Request::new(Full::default());
//! let res = svc.clone().oneshot(anonymous).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//!
//! let alice = Request::builder()
//!     .header("x-api-key", "pk_live_alice_secret")
//!     .body(Full::default())
//!     .unwrap();
//! let res = svc.oneshot(alice).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # }
//! ```

mod key;
mod layer;
mod managed;
#[cfg(feature = "postgres")]
mod postgres;
mod service;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

pub use crate::id::{InvalidUserId, UserId};
pub use key::{ApiKey, Principal};
pub use layer::AuthLayer;
pub use managed::{
    utc_day, Cidr, IssuedKey, KeyGrant, KeyId, KeyLimits, KeyRecord, KeyRegistry, NewKey,
    WithFixedKeys, KEY_PREFIX,
};
#[cfg(feature = "postgres")]
pub use postgres::PgKeys;
pub use service::{Auth, ClientIp};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteKeys;
pub use store::{KeyStore, StaticKeys};
