//! The build script's reading of the compiler's version, which decides
//! whether the linker is LLD and is given the list of functions to place
//! first (GNU ld would refuse it and fail the build).

#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

use build_script::minor_version;

#[test]
fn the_compiler_version_is_read_as_rustc_prints_it() {
    assert_eq!(minor_version("rustc 1.95.0 (59807616e 2026-04-14)\n"), Some(95));
    assert_eq!(minor_version("rustc 1.96.0-nightly (abc 2026-05-01)"), Some(96));
    assert!(minor_version("rustc 1.89.0 (29483883e 2025-08-04)").is_some_and(|minor| minor < 90));
}

#[test]
fn anything_else_is_no_version_and_no_list() {
    for text in ["", "rustc", "rustc 2.0.0", "rustc 1.x.0", "gcc 12.2.0"] {
        assert_eq!(minor_version(text), None, "{text:?}");
    }
}
