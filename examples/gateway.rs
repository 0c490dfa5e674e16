//! The server binary under the name it had before it was one:
//!
//! ```sh
//! cargo run --release --example gateway
//! ```
//!
//! runs the same program as `cargo run --release` (its source is the binary's), but, as an
//! example, also builds the test and benchmark crates first. Prefer `cargo run --release`.

#[path = "../src/bin/image-gateway/main.rs"]
mod binary;

fn main() {
    binary::main();
}
