//! The `image-gateway` binary as its own process, started with test settings.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ALICE_KEY;

/// The binary's executable: the one cargo built for this test run, or with
/// `IMAGE_GATEWAY_RELEASE=1` the release build (what the README's figures measure).
pub fn gateway_binary() -> PathBuf {
    if std::env::var_os("IMAGE_GATEWAY_RELEASE").is_none() {
        return PathBuf::from(env!("CARGO_BIN_EXE_image-gateway"));
    }
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--bin",
            "image-gateway",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build runs");
    assert!(out.status.success(), "building the binary failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "image-gateway")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("the binary's executable path")
}

pub struct Process {
    pub child: Child,
    /// Where it listens: the address it printed (port `0` asks for a free one, so no test
    /// races another for a port).
    pub addr: std::net::SocketAddr,
    /// What it printed after its address.
    printed: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Process {
    pub fn start(binary: &Path, data: &Path, port: u16, latency_ms: u64) -> Process {
        let latency = latency_ms.to_string();
        Process::start_with(
            binary,
            data,
            port,
            &[("GATEWAY_REFERENCE_LATENCY_MS", &latency)],
        )
    }

    /// Starts the binary with the test settings, `env` added over them.
    pub fn start_with(binary: &Path, data: &Path, port: u16, env: &[(&str, &str)]) -> Process {
        Process::start_args(binary, data, port, &[], env)
    }

    /// Starts the binary with `args`, the test settings and `env` over them.
    pub fn start_args(
        binary: &Path,
        data: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let mut child = Command::new(binary)
            .args(args)
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
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the binary printed its address")
                .unwrap();
            if let Some((_, addr)) = line.split_once("listening on http://") {
                break addr.trim().parse().expect("a socket address");
            }
        };
        // Keep draining so the child never blocks on a full pipe; the lines go to
        // `printed`.
        let (sender, printed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Process {
            child,
            addr,
            printed: std::sync::Mutex::new(printed),
        }
    }

    /// The next line the binary printed (after its address) that contains `needle`.
    pub fn printed(&self, needle: &str) -> String {
        let printed = self.printed.lock().unwrap();
        loop {
            let line = printed
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the binary never printed {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
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

impl Process {
    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
