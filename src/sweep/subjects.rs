//! The subjects of a sweep, from either layout:
//! - a folder of subject folders, each holding its photos, with `subjects.txt` beside them
//!   (`name class kind` per line, kind `object` or `live`; `#` starts a comment);
//! - google/dreambooth's `dataset/<subject>/` with `prompts_and_classes.txt`, whose
//!   `subject_name,class` table names each subject's class (cats and dogs are its live
//!   subjects, everything else an object).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::render::prompts::Kind;
use crate::train::dataset::{is_photo, PHOTO_EXTENSIONS};

/// One subject of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSubject {
    pub name: String,
    pub class: String,
    pub kind: Kind,
    /// The folder of its photos.
    pub photos: PathBuf,
}

/// The classes google/dreambooth counts as live subjects.
const LIVE_CLASSES: &[&str] = &["cat", "dog"];

/// Read the subjects under `root` (either layout), in name order.
pub fn read(root: &Path) -> Result<Vec<SweepSubject>> {
    if !root.is_dir() {
        return Err(Error::setting(
            "subjects",
            format!("{}: no such folder of subjects", root.display()),
        ));
    }
    let table = if root.join("subjects.txt").is_file() {
        read_subjects_txt(&root.join("subjects.txt"))?
    } else if root.join("prompts_and_classes.txt").is_file() {
        read_prompts_and_classes(&root.join("prompts_and_classes.txt"))?
    } else {
        return Err(Error::setting(
            "subjects",
            format!(
                "{}: neither subjects.txt (name class object|live per line) nor \
                 prompts_and_classes.txt (google/dreambooth's dataset) is there",
                root.display()
            ),
        ));
    };
    // Every subject folder must have its class: a folder the table does not name would be
    // silently left out of the sweep.
    for entry in std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') && !table.contains_key(&name) {
            return Err(Error::setting(
                "subjects",
                format!(
                    "{}: the subject folder `{name}` has no class in {}: add a line for it",
                    root.display(),
                    if root.join("subjects.txt").is_file() {
                        "subjects.txt"
                    } else {
                        "prompts_and_classes.txt"
                    }
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for (name, (class, kind)) in table {
        let photos = root.join(&name);
        if !photos.is_dir() {
            return Err(Error::setting(
                "subjects",
                format!(
                    "{}: subject `{name}` is listed but has no folder",
                    root.display()
                ),
            ));
        }
        if count_photos(&photos)? == 0 {
            return Err(Error::setting(
                "subjects",
                format!(
                    "{}: no photos ({}) in the subject folder",
                    photos.display(),
                    PHOTO_EXTENSIONS.join(", ")
                ),
            ));
        }
        out.push(SweepSubject {
            name,
            class,
            kind,
            photos,
        });
    }
    if out.is_empty() {
        return Err(Error::setting(
            "subjects",
            format!("{}: lists no subjects", root.display()),
        ));
    }
    Ok(out)
}

fn count_photos(dir: &Path) -> Result<usize> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries.flatten().filter(|e| is_photo(&e.path())).count())
}

type Table = BTreeMap<String, (String, Kind)>;

fn read_subjects_txt(path: &Path) -> Result<Table> {
    let text = crate::fsutil::read_to_string(path)?;
    let mut table = Table::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let kind = f.get(2).and_then(|k| Kind::parse(k));
        match (f.len(), kind) {
            (3, Some(kind)) => {
                check_name(path, n + 1, f[0])?;
                if table
                    .insert(f[0].to_string(), (f[1].to_string(), kind))
                    .is_some()
                {
                    return Err(Error::config(
                        path,
                        format!("line {}: subject `{}` is listed twice", n + 1, f[0]),
                    ));
                }
            }
            _ => {
                return Err(Error::config(
                    path,
                    format!(
                        "line {}: expected `name class object|live`, got {line:?}",
                        n + 1
                    ),
                ))
            }
        }
    }
    Ok(table)
}

/// The `subject_name,class` table of google/dreambooth's `prompts_and_classes.txt` (the
/// prompt lists after it are the ones bundled as the `dreambooth` prompt set).
fn read_prompts_and_classes(path: &Path) -> Result<Table> {
    let text = crate::fsutil::read_to_string(path)?;
    let mut table = Table::new();
    let mut in_table = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.replace(' ', "") == "subject_name,class" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if line.is_empty() {
            if table.is_empty() {
                continue;
            }
            break;
        }
        let Some((name, class)) = line.split_once(',') else {
            break;
        };
        let (name, class) = (name.trim(), class.trim());
        check_name(path, n + 1, name)?;
        if class.is_empty() || class.contains(',') {
            return Err(Error::config(
                path,
                format!(
                    "line {}: subject `{name}` has no usable class ({class:?})",
                    n + 1
                ),
            ));
        }
        let kind = if LIVE_CLASSES.contains(&class) {
            Kind::Live
        } else {
            Kind::Object
        };
        table.insert(name.to_string(), (class.to_string(), kind));
    }
    if table.is_empty() {
        return Err(Error::config(
            path,
            "no `subject_name,class` table: expected google/dreambooth's prompts_and_classes.txt",
        ));
    }
    Ok(table)
}

/// Subject names become folder names: letters, digits, `-` and `_` only.
fn check_name(path: &Path, line: usize, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            path,
            format!("line {line}: subject name {name:?} may use letters, digits, - and _ only"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dreambooth_table_gives_classes_and_the_live_split() {
        let dir = std::env::temp_dir().join(format!("moslora-pac-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("prompts_and_classes.txt");
        std::fs::write(
            &p,
            "Classes\n\nsubject_name,class\nbackpack,backpack\nbear_plushie,stuffed animal\n\
             cat2,cat\ndog5,dog\n\nPrompts\n\nObject Prompts\nprompt_list = [\n]\n",
        )
        .unwrap();
        let t = read_prompts_and_classes(&p).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t["bear_plushie"],
            ("stuffed animal".to_string(), Kind::Object)
        );
        assert_eq!(t["cat2"].1, Kind::Live);
        assert_eq!(t["dog5"].1, Kind::Live);
        std::fs::write(&p, "Classes\nsubject_name,class\n../etc,dog\n").unwrap();
        assert!(read_prompts_and_classes(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
