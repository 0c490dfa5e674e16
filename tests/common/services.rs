//! The services some tests need (PostgreSQL), found on this machine or refused loudly.
//!
//! Locally a test whose service is absent says so on stderr and passes without running;
//! with `IMAGE_GATEWAY_REQUIRE_SERVICES=1` (CI sets it) an absent service fails the test.

/// The test database; `IMAGE_GATEWAY_TEST_DATABASE_URL` overrides it.
pub fn database_url() -> String {
    std::env::var("IMAGE_GATEWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A URL of the test database whose connections see a fresh, empty schema of their own, so
/// tests never share tables. `None` when PostgreSQL cannot be reached and CI does not
/// require it.
pub async fn fresh_postgres(label: &str) -> Option<String> {
    let base = database_url();
    let connected = tokio_postgres::connect(&base, tokio_postgres::NoTls).await;
    let (client, connection) = match connected {
        Ok(pair) => pair,
        Err(error) => {
            if std::env::var_os("IMAGE_GATEWAY_REQUIRE_SERVICES").is_some() {
                panic!("PostgreSQL is required here and is not reachable at {base}: {error}");
            }
            eprintln!(
                "\n*** SKIPPED {label}: PostgreSQL is not reachable at {base} ({error}); \
                 CI sets IMAGE_GATEWAY_REQUIRE_SERVICES=1 and fails instead ***\n"
            );
            return None;
        }
    };
    tokio::spawn(connection);
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("a schema of the test's own");
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{separator}options=-csearch_path%3D{schema}"))
}

/// One query's rows, on a connection of its own.
pub async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client.query(sql, &[]).await.expect("the query runs")
}

/// The test Redis; `IMAGE_GATEWAY_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("IMAGE_GATEWAY_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test Redis and a key prefix no other test uses, or `None` when Redis cannot be
/// reached and CI does not require it.
pub async fn fresh_redis(label: &str) -> Option<(String, String)> {
    let url = redis_url();
    let reachable = tokio::net::TcpStream::connect(
        url.trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or_default(),
    )
    .await;
    if let Err(error) = reachable {
        if std::env::var_os("IMAGE_GATEWAY_REQUIRE_SERVICES").is_some() {
            panic!("Redis is required here and is not reachable at {url}: {error}");
        }
        eprintln!(
            "\n*** SKIPPED {label}: Redis is not reachable at {url} ({error}); \
             CI sets IMAGE_GATEWAY_REQUIRE_SERVICES=1 and fails instead ***\n"
        );
        return None;
    }
    Some((url, format!("test-{}", uuid::Uuid::new_v4().simple())))
}
