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

/// The test S3-compatible server (CI starts moto); `IMAGE_GATEWAY_TEST_S3_ENDPOINT` names it.
pub fn s3_endpoint() -> Option<String> {
    std::env::var("IMAGE_GATEWAY_TEST_S3_ENDPOINT").ok()
}

/// A new, empty bucket on the test S3 server, as (endpoint, bucket); `None` (said loudly)
/// when there is no server and CI does not require one.
pub async fn fresh_bucket(label: &str) -> Option<(String, String)> {
    let Some(endpoint) = s3_endpoint() else {
        if std::env::var_os("IMAGE_GATEWAY_REQUIRE_SERVICES").is_some() {
            panic!("an S3 server is required here: set IMAGE_GATEWAY_TEST_S3_ENDPOINT");
        }
        eprintln!(
            "\n*** SKIPPED {label}: no S3 server (IMAGE_GATEWAY_TEST_S3_ENDPOINT is unset); \
             CI starts one and fails instead ***\n"
        );
        return None;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bucket = format!("test-{}", uuid::Uuid::new_v4().simple());
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {endpoint} is not reachable: {e}"));
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "creating a bucket: {answer}"
    );
    Some((endpoint, bucket))
}
