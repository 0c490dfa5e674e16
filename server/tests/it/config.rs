//! `image-gateway --config gateway.toml`: the file sets everything, the environment wins,
//! mistakes are refused at start with the file, line and reason, and `--print-config` shows
//! the effective settings with every secret masked.

use crate::common;

use std::process::{Command, Stdio};

use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, StatusCode};

const ADMIN_KEY: &str = "adm_config_secret_0123456789";

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary to its exit with `args`, no environment settings of its own.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(gateway_binary())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edit(quality: &str, size: &str) -> Form {
    edit_of(quality, size, 8)
}

/// An edit of a `side x side` source.
fn edit_of(quality: &str, size: &str, side: u32) -> Form {
    Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("quality", quality)
        .text("size", size)
        .file("image", "a.png", "image/png", &png(side, side))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_from_one_file_with_the_environment_on_top() {
    let dir = temp_dir("config-run");
    let port = 0;
    let file = write(
        &dir,
        &format!(
            r#"# Everything in one file.
addr = "127.0.0.1:1"          # the environment's GATEWAY_ADDR wins
demo_balance = 1000
admin_key = "{ADMIN_KEY}"
url_fetch = false
stream_keepalive_secs = 5

[models."gpt-image-2"]
max_images = 4
price_per_image = 10
qualities = ["auto", "low", "high"]
prices = [
  {{ quality = "high", price = 30 }},
  {{ size = "16x16", price = 15 }},
  {{ size = "16x16", quality = "high", price = 45 }},
]
"#
        ),
    );
    let gateway = Process::start_args(
        &gateway_binary(),
        &dir,
        port,
        &["--config", file.to_str().unwrap()],
        // The test harness's GATEWAY_DEMO_BALANCE (100) and price (10) are set in the
        // environment too: the environment wins over the file's 1000.
        &[],
    );
    let server = TestServer::at(gateway.addr);
    let balance = || async {
        server
            .call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .json()["available"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        balance().await,
        100,
        "GATEWAY_DEMO_BALANCE from the environment"
    );

    // The model's prices: base, per quality, per size, per both.
    for (quality, size, price) in [
        ("low", "8x8", 10),
        ("high", "8x8", 30),
        ("low", "16x16", 15),
        ("high", "16x16", 45),
    ] {
        let before = balance().await;
        let reply = server.edit_form(ALICE_KEY, edit(quality, size)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(before - balance().await, price, "{quality} {size}");
    }
    // `auto` is not a discount: an edit at `size: auto` is made at its source's size and
    // pays that size's rule; a `quality: auto` the backend resolves pays the dearest quality.
    let deposit = server
        .send(
            http::Request::post("/admin/v1/accounts/alice/deposits")
                .header("authorization", format!("Bearer {ADMIN_KEY}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"amount": 200, "reference": "auto prices"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(deposit.status, StatusCode::OK, "{:?}", deposit.body);
    for (quality, size, side, price) in [
        ("low", "auto", 16, 15),
        ("low", "auto", 8, 10),
        ("auto", "8x8", 8, 30),
        ("auto", "auto", 16, 45),
    ] {
        let before = balance().await;
        let reply = server
            .edit_form(ALICE_KEY, edit_of(quality, size, side))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(
            before - balance().await,
            price,
            "{quality} {size} of a {side}x{side} source"
        );
    }
    // The file's qualities and max_images hold.
    let medium = server.edit_form(ALICE_KEY, edit("medium", "8x8")).await;
    assert_eq!(medium.error().2.as_deref(), Some("quality"));
    let five = server
        .edit_form(ALICE_KEY, edit("low", "8x8").text("n", "5"))
        .await;
    assert_eq!(five.error().2.as_deref(), Some("n"));
    // The file's admin key opens the admin API.
    let metrics = server.call(Method::GET, "/metrics", ADMIN_KEY).await;
    assert_eq!(metrics.status, StatusCode::OK);
    // url_fetch = false: URLs are refused.
    let fetched = server
        .send(
            http::Request::post("/v1/images/compose")
                .header("authorization", format!("Bearer {ALICE_KEY}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"model":"gpt-image-2","prompt":"p","image_urls":["https://example.com/a.png"]}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(fetched.error().2.as_deref(), Some("image_urls"));
}

#[test]
fn mistakes_are_refused_at_start_with_the_file_and_line() {
    let dir = temp_dir("config-errors");
    for (text, expected) in [
        (
            "addr = \"127.0.0.1:0\"\n\nprise_per_image = 3\n",
            ":3: unknown setting `prise_per_image`",
        ),
        (
            "quota_files = \"many\"\n",
            ":1: `quota_files` must be a non-negative integer",
        ),
        (
            "\ncors_origins = [\"https://a.example\", \"*\"]\n",
            ":2: `cors_origins`: GATEWAY_CORS_ORIGINS: `*` is not an origin",
        ),
        (
            "max_renders = 1\n[models.m]\nprise = 1\n",
            "models.m: unknown field `prise`",
        ),
        ("addr = \"unclosed\n", ":1:"),
    ] {
        let path = write(&dir, text);
        let config = path.to_str().unwrap();
        let (ok, _, stderr) = run(&["--config", config], &[]);
        assert!(!ok, "{text:?} was accepted");
        assert!(
            stderr.contains(config) && stderr.contains(expected),
            "{text:?}: {stderr}"
        );
    }
    let (ok, _, stderr) = run(&["--config", "/nonexistent/gateway.toml"], &[]);
    assert!(
        !ok && stderr.contains("cannot read the config file"),
        "{stderr}"
    );
    // The environment overrides a bad file value: it is never used.
    let path = write(&dir, "rate_limit = 5\ncors_origins = \"*\"\n");
    let (ok, stdout, stderr) = run(
        &["--config", path.to_str().unwrap(), "--print-config"],
        &[("GATEWAY_CORS_ORIGINS", "https://ok.example")],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("cors_origins = \"https://ok.example\"  # environment"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("rate_limit = 5  # {}:1", path.display())),
        "{stdout}"
    );
}

#[test]
fn print_config_shows_the_effective_settings_with_secrets_masked() {
    let dir = temp_dir("config-print");
    let path = write(
        &dir,
        "api_keys = [\"alice:pk_live_file_secret_1\", \"bob:pk_live_file_secret_2\"]\n\
         admin_key = \"adm_file_secret\"\n\
         upstream_url = \"https://api.example\"\n\
         upstream_key = \"sk-upstream-secret\"\n\
         database_url = \"postgres://gw:db-secret@127.0.0.1:5432/test\"\n\
         [models.\"gpt-image-2\"]\nprice_per_image = 4\n",
    );
    let (ok, stdout, stderr) = run(
        &["--print-config", "--config", path.to_str().unwrap()],
        &[("GATEWAY_S3_SECRET_ACCESS_KEY", "s3-env-secret")],
    );
    assert!(ok, "{stderr}");
    for secret in [
        "pk_live_file_secret",
        "adm_file_secret",
        "sk-upstream-secret",
        "db-secret",
        "s3-env-secret",
    ] {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
    }
    assert!(
        stdout.contains("api_keys = \"alice:****,bob:****\""),
        "{stdout}"
    );
    assert!(stdout.contains("database_url = \"postgres://gw:****@127.0.0.1:5432/test\""));
    assert!(stdout.contains("addr = \"127.0.0.1:8080\"  # default"));
    assert!(stdout.contains("[models.\"gpt-image-2\"]\nprice_per_image = 4"));
    // What it prints is a config file the binary reads back.
    let printed = dir.join("printed.toml");
    std::fs::write(&printed, &stdout).unwrap();
    let (ok, _, stderr) = run(
        &["--print-config", "--config", printed.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{stderr}");
}

/// The routing example of `docs/configuration.md` is a config file the binary takes: it
/// prints it back and starts on it, every deployment built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_routing_example_starts_the_binary() {
    let doc = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ));
    let example = doc
        .split("```toml\n")
        .map(|block| block.split("```").next().unwrap_or_default())
        .find(|block| block.contains("[[models.\"gpt-image-2\".upstreams]]"))
        .expect("the routing example");
    let dir = temp_dir("config-routing-example");
    let path = write(&dir, example);
    let (ok, stdout, stderr) = run(&["--print-config", "--config", path.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    for line in [
        "provider = \"gemini\"",
        "violation_fee = 1",
        "provider = \"azure\"",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    let admin = "admin_example_0123456789";
    let env = [
        ("OPENAI_KEY", "sk-a"),
        ("AZURE_KEY", "az-b"),
        ("GEMINI_KEY", "gm-c"),
        ("SECOND_KEY", "sk-d"),
        ("GATEWAY_ADMIN_KEY", admin),
    ];
    let process = common::binary::Process::start_args(
        &common::binary::gateway_binary(),
        &dir,
        0,
        &["--config", path.to_str().unwrap()],
        &env,
    );
    let server = TestServer::at(process.addr);
    let states = server
        .call(http::Method::GET, "/admin/v1/upstreams", admin)
        .await
        .json();
    let names: Vec<&str> = states["data"][0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "gpt-image-2#0",
            "gpt-image-2#1",
            "gpt-image-2#2",
            "gpt-image-2#3"
        ],
        "{states}"
    );
}
