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
pub fn node_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(provision).clone()
}

fn provision() -> PathBuf {
    let prefix = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-sdk");
    let ready = prefix.join(".ready");
    if !ready.exists() {
        std::fs::create_dir_all(&prefix).unwrap();
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(PACKAGE)
            .output()
            .unwrap_or_else(|e| panic!("cannot run npm: {e}"));
        assert!(
            out.status.success(),
            "npm install {PACKAGE} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, b"").unwrap();
    }
    prefix.join("node_modules")
}
