//! Links the functions that a running `wharf up` executes next to each
//! other, ahead of those it never runs (`link-order.txt`, made by
//! `bench/link-order.sh`). The kernel maps code in 64 KiB windows around
//! each page it runs; spread through 28 MB of machine code, startup alone
//! touched 78% of it, resident for the life of the process. Together the
//! executed functions are a quarter of the code (docs/BENCHMARKS.md,
//! fifteenth round).
//!
//! The names carry the compiler's hashes of each instance, so a name that
//! a change renamed is simply not found and its function stays where it
//! was: a stale list costs memory, never correctness.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    // LLD, Rust's default linker for this target, reads the list; other
    // linkers would refuse the option.
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else { return };
    println!("cargo:rustc-link-arg-bin=wharf=-Wl,--symbol-ordering-file={dir}/link-order.txt");
    // Debug builds name other instances; none of the list is found there.
    println!("cargo:rustc-link-arg-bin=wharf=-Wl,--no-warn-symbol-ordering");
    // Relative relocations packed (DT_RELR): 20 KB instead of 1.3 MB that
    // the loader reads, and keeps resident, at every start. The binary
    // then requires glibc 2.36, so only where it is built on one (a
    // binary built on a glibc runs on that one or newer).
    if host_glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=wharf=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc, as `getconf` reports it ("glibc 2.36").
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    glibc_version(&String::from_utf8_lossy(&output.stdout)).is_some_and(|version| version >= (major, minor))
}

pub fn glibc_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
