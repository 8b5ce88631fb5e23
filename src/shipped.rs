//! The files that ship with moslora beside the binary: the toy world's model and judge, and the
//! run templates. An installed binary (`make install`) finds them in `PREFIX/share/moslora`;
//! one run from its source tree finds them there, from whatever folder it is started in.

use std::path::{Path, PathBuf};

/// The source tree this binary was built from (for a binary run where it was built).
const SOURCE_TREE: &str = env!("CARGO_MANIFEST_DIR");

/// Where `make install` puts the shipped files, relative to the prefix (the installed
/// binary is `PREFIX/bin/moslora`).
const INSTALLED: &str = "share/moslora";

/// The folders that may hold the shipped files, in the order they are tried: beside an
/// installed binary first, then the source tree the binary was built from.
pub fn roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        roots.push(prefix.join(INSTALLED));
    }
    roots.push(Path::new(SOURCE_TREE).join("assets"));
    roots
}

/// The shipped file or folder `name` (e.g. `toy-model`): the first root that holds it, or,
/// when none does, the path in the last root (so that an error names where it was looked for).
pub fn path(name: &str) -> PathBuf {
    let roots = roots();
    roots
        .iter()
        .map(|r| r.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| roots[roots.len() - 1].join(name))
}

/// The toy world's pretrained model (`assets/toy-model`).
pub fn toy_model() -> PathBuf {
    path("toy-model")
}

/// The toy world's judge (`assets/toy-judge`).
pub fn toy_judge() -> PathBuf {
    path("toy-judge")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_tree_holds_the_toy_model() {
        // Run from target/: no installed share folder, so the source tree answers.
        let m = toy_model();
        assert!(m.join("model_index.json").exists(), "{}", m.display());
        assert!(toy_judge().join("config.json").exists());
    }

    #[test]
    fn a_missing_name_points_into_the_last_root() {
        let p = path("no-such-thing");
        assert!(p.ends_with("assets/no-such-thing"), "{}", p.display());
    }
}
