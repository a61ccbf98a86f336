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
    // Relative relocations packed (DT_RELR, glibc 2.36): 20 KB instead of
    // 1.3 MB that the loader reads, and keeps resident, at every start.
    println!("cargo:rustc-link-arg-bin=wharf=-Wl,-z,pack-relative-relocs");
}
