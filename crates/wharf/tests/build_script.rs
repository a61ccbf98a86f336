//! The build script's reading of the build machine's glibc, which decides
//! whether the binary is linked with packed relocations (glibc 2.36+).

#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

use build_script::glibc_version;

#[test]
fn a_glibc_version_is_read_as_getconf_prints_it() {
    assert_eq!(glibc_version("glibc 2.36\n"), Some((2, 36)));
    assert_eq!(glibc_version("glibc 2.41.9000"), Some((2, 41)));
    assert!(glibc_version("glibc 2.31").is_some_and(|version| version < (2, 36)));
}

#[test]
fn anything_else_is_no_glibc_and_no_packed_relocations() {
    for text in ["", "musl 1.2.4", "glibc", "glibc 2", "glibc two.36", "glibc 2.x"] {
        assert_eq!(glibc_version(text), None, "{text:?}");
    }
}
