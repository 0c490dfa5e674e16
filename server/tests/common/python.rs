//! The Python interpreter with the `openai` and `requests` packages, for client tests.
//!
//! `IMAGE_GATEWAY_PYTHON` names one; otherwise a virtualenv under `target/` is made once with
//! `python3 -m venv` and `pip install`. A machine that cannot make it fails the test with
//! the reason: the test is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const PACKAGES: [&str; 2] = ["openai>=1.60", "requests"];

/// Runs `script` (`python -c`) with `GATEWAY_URL` set to `url`, `GATEWAY_KEY` to alice's key
/// and `env`, off the async runtime; its standard output, trimmed, and its standard error.
pub async fn run(
    script: &'static str,
    url: String,
    env: Vec<(&'static str, std::ffi::OsString)>,
) -> (String, String) {
    let python = python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script])
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", super::ALICE_KEY)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(provision).clone()
}

fn provision() -> PathBuf {
    if let Ok(path) = std::env::var("IMAGE_GATEWAY_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.exists() {
        return python;
    }
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PACKAGES));
    std::fs::write(&ready, b"").unwrap();
    python
}
