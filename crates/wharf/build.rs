//! Links the functions that a running `wharf up` executes next to each
//! other, ahead of those it never runs (`link-order.txt`, made by
//! `bench/link-order.sh`). The kernel maps code in 64 KiB windows around
//! each page that runs; with the executed functions spread through all of
//! the code, startup alone touched 78% of it, resident for the life of
//! the process. Together they are under a third of it (docs/BENCHMARKS.md,
//! fifteenth round).
//!
//! The names carry the compiler's hashes of each instance, so a name that
//! a change renamed is simply not found and its function stays where it
//! was: a stale list costs memory, never correctness.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    if !links_with_lld() {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else { return };
    println!("cargo:rustc-link-arg-bin=wharf=-Wl,--symbol-ordering-file={dir}/link-order.txt");
    // Debug builds name their instances otherwise: LLD would warn of each
    // listed name it does not find.
    println!("cargo:rustc-link-arg-bin=wharf=-Wl,--no-warn-symbol-ordering");
}

/// Whether the binary is linked by LLD, the one linker here that reads the
/// list (GNU ld refuses the option): Rust's default for this target since
/// 1.90, unless the build names another linker.
fn links_with_lld() -> bool {
    let default_target = env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu");
    let linker_chosen = env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS")
            .is_ok_and(|flags| ["linker", "fuse-ld", "link-self-contained"].iter().any(|flag| flags.contains(flag)));
    default_target && !linker_chosen && rustc_minor_version().is_some_and(|minor| minor >= 90)
}

/// The minor version of the compiler cargo runs (`rustc 1.95.0 (…)`).
fn rustc_minor_version() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let output = Command::new(rustc).arg("--version").output().ok()?;
    minor_version(&String::from_utf8_lossy(&output.stdout))
}

pub fn minor_version(text: &str) -> Option<u32> {
    let version = text.strip_prefix("rustc 1.")?;
    version.split(['.', ' ', '-']).next()?.parse().ok()
}
