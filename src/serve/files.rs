//! Which file of a served folder (a study, a job's output) a request path names, if any.
//!
//! Only plain files inside the folder, reached without a symlink, with an extension of
//! a page (HTML and pictures), are served. The path is percent-decoded before it is
//! split, so an encoded `/` or `..` is judged like a plain one; any `..`, `.`, empty segment,
//! backslash or NUL refuses the request, and so does any symlink on the way (even one that
//! points back inside). The key, the votes database and the links file lie beside the folder,
//! never in it; they are refused by name and by place all the same.

use std::path::{Component, Path, PathBuf};

use percent_encoding::percent_decode_str;

/// Extensions the rater page needs.
const SERVED: [(&str, &str); 6] = [
    ("html", "text/html; charset=utf-8"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("gif", "image/gif"),
];
/// The biggest file served (a 1024 px render is a few MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A served folder and what must never be served.
#[derive(Debug, Clone)]
pub struct SafeFiles {
    /// Canonical served folder.
    root: PathBuf,
    /// Canonical paths of the key, the database and the links file (where they exist).
    secret: Vec<PathBuf>,
}

impl SafeFiles {
    pub fn new(root: &Path, secrets: &[&Path]) -> std::io::Result<SafeFiles> {
        Ok(SafeFiles {
            root: root.canonicalize()?,
            secret: secrets
                .iter()
                .filter_map(|p| p.canonicalize().ok())
                .collect(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a raw (still percent-encoded) request path names, with its content type.
    pub fn resolve(&self, raw: &str) -> Option<(PathBuf, &'static str)> {
        let decoded = percent_decode_str(raw).decode_utf8().ok()?;
        if decoded.contains(['\0', '\\']) {
            return None;
        }
        let rel = decoded.strip_prefix('/')?;
        let mut path = self.root.clone();
        for seg in rel.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return None;
            }
            // One plain name per segment (no drive letters or roots on any platform).
            let mut parts = Path::new(seg).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            ) {
                return None;
            }
            path.push(seg);
            if std::fs::symlink_metadata(&path)
                .ok()?
                .file_type()
                .is_symlink()
            {
                return None;
            }
        }
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return None;
        }
        let canonical = path.canonicalize().ok()?;
        if !canonical.starts_with(&self.root) || self.secret.contains(&canonical) {
            return None;
        }
        let name = canonical.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".key.json") {
            return None;
        }
        let ext = name.rsplit_once('.')?.1;
        let kind = SERVED.iter().find(|(e, _)| *e == ext)?.1;
        Some((canonical, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_page_files_inside_the_folder() {
        let base = std::env::temp_dir().join(format!("moslora-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let study = base.join("S");
        std::fs::create_dir_all(study.join("images")).unwrap();
        std::fs::write(study.join("index.html"), "page").unwrap();
        std::fs::write(study.join("images/a.png"), "png").unwrap();
        std::fs::write(study.join("notes.json"), "{}").unwrap();
        std::fs::write(base.join("S.key.json"), "{}").unwrap();
        std::fs::write(base.join("outside.png"), "x").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("outside.png"), study.join("out.png")).unwrap();
            std::os::unix::fs::symlink(study.join("images/a.png"), study.join("in.png")).unwrap();
            std::os::unix::fs::symlink(&base, study.join("up")).unwrap();
        }
        let key = base.join("S.key.json");
        let f = SafeFiles::new(&study, &[&key]).unwrap();
        assert!(f.resolve("/index.html").is_some());
        assert_eq!(f.resolve("/images/a.png").unwrap().1, "image/png");
        assert!(f.resolve("/images/%61.png").is_some());
        for bad in [
            "/",
            "/images",
            "/notes.json",
            "/../S.key.json",
            "/images/../../S.key.json",
            "/%2e%2e/S.key.json",
            "/images%2f..%2f..%2fS.key.json",
            "/%2E%2E/outside.png",
            "//etc/passwd",
            "/./index.html",
            "/images//a.png",
            "/images\\a.png",
            "/index.html%00.png",
            "/out.png",
            "/in.png",
            "/up/outside.png",
            "/up/S.key.json",
            "index.html",
            "/%ff.png",
        ] {
            assert!(f.resolve(bad).is_none(), "{bad} was served");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
