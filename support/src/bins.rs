//! Where the workspace's binaries are: next to the running executable, or one folder up
//! when that is a test executable in `target/<profile>/deps/`.

use std::path::PathBuf;

/// The directory of the workspace binaries this executable was built with: its own
/// directory, or the parent of `deps/` for a test executable. `None` if unknown.
pub fn bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from)
    } else {
        Some(dir.to_path_buf())
    }
}

/// Path of the workspace binary `name`; panics (with how to build it) if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().expect("executable directory").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}
