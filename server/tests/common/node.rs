//! The official OpenAI Node SDK (`openai` on npm), for client tests.
//!
//! Installed once under `target/node-sdk` with `npm install`. A machine that cannot install
//! it fails the test with the reason: the test is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The SDK's major version the tests are written against.
const PACKAGE: &str = "openai@6";

/// The `node_modules` directory holding the SDK.
#[allow(dead_code)]
pub fn node_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| provision("target/node-sdk", PACKAGE))
        .clone()
}

/// The `node_modules` directory holding `playwright-core` (it drives Debian's chromium; it
/// never downloads a browser of its own).
#[allow(dead_code)]
pub fn playwright_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| provision("target/node-console", "playwright-core@1"))
        .clone()
}

fn provision(dir: &str, package: &str) -> PathBuf {
    let prefix = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    let ready = prefix.join(".ready");
    if !ready.exists() {
        std::fs::create_dir_all(&prefix).unwrap();
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(package)
            .output()
            .unwrap_or_else(|e| panic!("cannot run npm: {e}"));
        assert!(
            out.status.success(),
            "npm install {package} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, b"").unwrap();
    }
    prefix.join("node_modules")
}
