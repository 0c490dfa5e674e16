//! The example server as its own process, started with test settings.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ALICE_KEY;

/// Builds the example and returns its executable.
pub fn example_binary() -> PathBuf {
    // `IMAGE_GATEWAY_EXAMPLE_RELEASE=1` measures the release build (the README's figures).
    let mut args = vec!["build", "--example", "gateway", "--message-format=json"];
    if std::env::var_os("IMAGE_GATEWAY_EXAMPLE_RELEASE").is_some() {
        args.push("--release");
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build runs");
    assert!(out.status.success(), "building the example failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "gateway")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("the example's executable path")
}

pub struct Example {
    pub child: Child,
}

impl Example {
    pub fn start(binary: &Path, data: &Path, port: u16, latency_ms: u64) -> Example {
        let latency = latency_ms.to_string();
        Example::start_with(
            binary,
            data,
            port,
            &[("GATEWAY_REFERENCE_LATENCY_MS", &latency)],
        )
    }

    /// Starts the example with the test settings, `env` added over them.
    pub fn start_with(binary: &Path, data: &Path, port: u16, env: &[(&str, &str)]) -> Example {
        let mut child = Command::new(binary)
            .env("GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("GATEWAY_DATA_DIR", data)
            .env("GATEWAY_API_KEYS", format!("alice:{ALICE_KEY}"))
            .env("GATEWAY_DEMO_BALANCE", "100")
            .env("GATEWAY_PRICE_PER_IMAGE", "10")
            .env("GATEWAY_HOLD_TTL_SECS", "2")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("the example printed its address")
                .unwrap();
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Example { child }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().unwrap().success()
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Example {
    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
