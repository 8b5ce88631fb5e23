//! The links file beside the key (`STUDY.links.txt`): one secret link per rater and one for
//! the organiser, as tab-separated `name<TAB>link` lines. It is the only place the tokens are
//! written in full (the database keeps digests), so it is private like the key (mode 0600).
//! It is rewritten at each start with the base URL of that start, keeping every link that
//! still matches the database.

use std::path::Path;

use super::tokens::digest;
use crate::error::{Error, Result};
use crate::fsutil;

/// The organiser's line in the links file (a rater may not take this name).
pub const ORGANISER: &str = "organiser";

/// One line: who, and the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub token: String,
}

/// The link a person opens: the page (or organiser page) with the token in the fragment.
pub fn url(base: &str, link: &Link) -> String {
    let base = base.trim_end_matches('/');
    if link.name == ORGANISER {
        format!("{base}/organiser#{}", link.token)
    } else {
        format!("{base}/#{}", link.token)
    }
}

/// The links of an existing file (none if there is no file); lines that are not links are
/// ignored.
pub fn read(path: &Path) -> Result<Vec<Link>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, link) = l.split_once('\t')?;
            let token = link.rsplit_once('#')?.1.trim();
            (!token.is_empty()).then(|| Link {
                name: name.to_string(),
                token: token.to_string(),
            })
        })
        .collect())
}

/// Keep the links whose token digest is `expected` for their name.
pub fn matching(links: Vec<Link>, expected: impl Fn(&str) -> Option<[u8; 32]>) -> Vec<Link> {
    links
        .into_iter()
        .filter(|l| expected(&l.name) == Some(digest(&l.token)))
        .collect()
}

/// Write the file (atomically, owner-only).
pub fn write(path: &Path, study_id: &str, base: &str, links: &[Link]) -> Result<()> {
    let mut text = format!(
        "# Secret links of study {study_id} (moslora study serve). Keep this file private, like \
         the key:\n# a link lets whoever holds it answer as that rater (or see the organiser's \
         page).\n"
    );
    for l in links {
        text.push_str(&format!("{}\t{}\n", l.name, url(base, l)));
    }
    // Owner-only from the moment it exists, not after.
    fsutil::write_private(path, text.as_bytes())
}
