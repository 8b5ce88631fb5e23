//! Prompt sets: YAML files with one list under `prompts:`, or several named lists (like the
//! DreamBooth `object:` and `live:` lists) chosen by name. "[V]" stands for the subject's
//! identifier and "{class}" for its class noun.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// DreamBench's split of subjects: objects, and live subjects (dogs and cats). It picks the
/// `object:` or the `live:` list of a prompt set such as `dreambooth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Object,
    Live,
}

impl Kind {
    /// The list's name (`object`, `live`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Live => "live",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "object" => Some(Kind::Object),
            "live" => Some(Kind::Live),
            _ => None,
        }
    }
}

/// The bundled sets, usable by name (`--prompts study8`) without a file.
pub const BUNDLED: &[(&str, &str)] = &[
    ("study8", include_str!("../../prompts/study8.yaml")),
    ("dreambooth", include_str!("../../prompts/dreambooth.yaml")),
    ("toy", include_str!("../../prompts/toy.yaml")),
];

/// One prompt template with its stable id (`p00`, `p01`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    pub id: String,
    pub template: String,
}

/// Read a set from a file path or a bundled name, choosing `set` among named lists.
pub fn load(source: &str, set: Option<&str>) -> Result<Vec<PromptTemplate>> {
    let (text, origin) = match BUNDLED.iter().find(|(n, _)| *n == source) {
        Some((_, text)) => (text.to_string(), format!("bundled prompt set `{source}`")),
        None => {
            let path = Path::new(source);
            if !path.exists() {
                let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
                return Err(Error::setting(
                    "render.prompts",
                    format!(
                        "prompt set {source}: no such file, and not a bundled set ({})",
                        names.join(", ")
                    ),
                ));
            }
            (
                crate::fsutil::read_to_string(path)?,
                path.display().to_string(),
            )
        }
    };
    parse(&text, set).map_err(|e| {
        // A list that is not there, or not chosen, is the invocation's to change (exit 2).
        let of_set = ["has several lists", "no list named", "has one list"]
            .iter()
            .any(|p| e.starts_with(p));
        if of_set {
            Error::setting("render.set", format!("{origin}: {e}"))
        } else {
            Error::msg(format!("{origin}: {e}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SetFile {
    One { prompts: Vec<String> },
    Named(BTreeMap<String, Vec<String>>),
}

/// Parse a prompt-set text.
pub fn parse(text: &str, set: Option<&str>) -> std::result::Result<Vec<PromptTemplate>, String> {
    let file: SetFile = serde_yaml::from_str(text).map_err(|e| {
        format!("not a prompt set ({e}): expected `prompts:` with a list, or named lists")
    })?;
    let list = match (file, set) {
        (SetFile::One { prompts }, None) => prompts,
        (SetFile::One { prompts }, Some("prompts")) => prompts,
        (SetFile::One { .. }, Some(s)) => {
            return Err(format!("has one list (`prompts:`), no list named `{s}`"))
        }
        (SetFile::Named(mut lists), Some(s)) => lists.remove(s).ok_or_else(|| {
            let names: Vec<String> = lists.keys().cloned().collect();
            format!("no list named `{s}` (it has: {})", names.join(", "))
        })?,
        (SetFile::Named(lists), None) if lists.len() == 1 => {
            lists.into_values().next().expect("one list")
        }
        (SetFile::Named(lists), None) => {
            let names: Vec<String> = lists.keys().cloned().collect();
            return Err(format!(
                "has several lists ({}): choose one with render.set in RUN.yaml (or \
                 `moslora render --set NAME`)",
                names.join(", ")
            ));
        }
    };
    let list: Vec<String> = list
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if list.is_empty() {
        return Err("has no prompts".into());
    }
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, template)| PromptTemplate {
            id: format!("p{i:02}"),
            template,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_sets_parse() {
        assert_eq!(load("study8", None).unwrap().len(), 8);
        assert_eq!(load("dreambooth", Some("object")).unwrap().len(), 25);
        assert_eq!(load("dreambooth", Some("live")).unwrap().len(), 25);
        let e = load("dreambooth", None).unwrap_err().to_string();
        assert!(e.contains("--set"), "{e}");
    }

    #[test]
    fn empty_and_wrong_sets_are_refused() {
        assert!(parse("prompts: []\n", None)
            .unwrap_err()
            .contains("no prompts"));
        assert!(parse("object: [a]\nlive: [b]\n", Some("x"))
            .unwrap_err()
            .contains("no list named `x`"));
        assert!(parse("- a\n- b\n", None)
            .unwrap_err()
            .contains("not a prompt set"));
    }
}
