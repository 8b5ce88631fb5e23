//! Hugging Face ids wherever a model or encoder folder is taken: `org/name`, or
//! `org/name@revision` (a branch, a tag or a commit). A path that exists always wins; an id is
//! looked up in the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) in huggingface_hub's own layout (`models--org--name/refs/<rev>`,
//! `snapshots/<commit>/...` linked to `blobs/<etag>`), so what diffusers downloaded is found
//! and what moslora downloads diffusers finds.
//!
//! [`locate`] only looks (the model code calls it, and never reaches the network); [`fetch`]
//! downloads what a snapshot lacks, unless `HF_HUB_OFFLINE` is set: only the files the
//! pipeline reads (configs, tokenizers, one variant's `.safetensors`), never pickles. The
//! downloads are `hf-hub`'s: blobs by etag, resumed with an HTTP Range from the partial file
//! a killed run left (hf-hub's `<etag>.part`, or huggingface_hub's `<etag>.incomplete`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Weight file stems the readers take: diffusers' (`unet`, `vae`) and transformers' (text
/// encoders, CLIP, DINO). Other `.safetensors` (a single-file copy at a repository's root, an
/// OpenCLIP export) are not downloaded.
const WEIGHT_STEMS: &[&str] = &["diffusion_pytorch_model", "model"];

/// A Hugging Face model id, with the revision asked for (`main` when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// `org/name` or `org/name@revision`; None for anything else (a path that starts with `.`
    /// or `/`, more or fewer than two parts, characters a repository name cannot have, or a
    /// name that ends like a file: `.safetensors`, `.ckpt`, `.json` ...).
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && !p.ends_with('.')
                && !p.contains("--")
                && !p.contains("..")
        };
        if !part_ok(org) || !part_ok(name) {
            return None;
        }
        let file_like = [
            ".safetensors",
            ".ckpt",
            ".pt",
            ".pth",
            ".bin",
            ".json",
            ".yaml",
            ".yml",
        ];
        if file_like
            .iter()
            .any(|x| name.to_ascii_lowercase().ends_with(x))
        {
            return None;
        }
        let revision = match revision {
            None => "main".to_string(),
            Some(r) => {
                let ok = !r.is_empty()
                    && !r.starts_with('/')
                    && !r.split('/').any(|p| p.is_empty() || p == "." || p == "..")
                    && r.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
                if !ok {
                    return None;
                }
                r.to_string()
            }
        };
        Some(HubId {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The id a path spells, if it spells one.
    pub fn from_path(p: &Path) -> Option<HubId> {
        HubId::parse(p.to_str()?)
    }

    /// The cache folder's name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// Whether a revision is already a commit (40 hex digits).
    fn revision_is_commit(&self) -> bool {
        is_commit(&self.revision)
    }

    /// `org/name`, with `@revision` when one other than `main` was asked for.
    pub fn label(&self) -> String {
        if self.revision == "main" {
            self.repo.clone()
        } else {
            format!("{}@{}", self.repo, self.revision)
        }
    }
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// What the files are for: a diffusers pipeline (with the weight variant its dtype prefers)
/// or a transformers encoder (CLIP, DINO). It decides which weights are fetched and the
/// manual download command that errors suggest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `variant`: `fp16` when the weights will be half precision anyway.
    Pipeline {
        variant: Option<String>,
    },
    Encoder,
}

impl Want {
    fn variant(&self) -> Option<&str> {
        match self {
            Want::Pipeline { variant } => variant.as_deref(),
            Want::Encoder => None,
        }
    }

    /// The `hf download` line that fetches what moslora reads, for people without network
    /// here (it works with `huggingface-cli download` too).
    pub fn download_command(&self, id: &HubId) -> String {
        let rev = if id.revision == "main" {
            String::new()
        } else {
            format!(" --revision {}", id.revision)
        };
        let patterns = match self {
            Want::Pipeline { variant: Some(v) } => {
                format!("\"*.json\" \"*.txt\" \"*/*.{v}.safetensors\"")
            }
            Want::Pipeline { variant: None } => {
                "\"*.json\" \"*.txt\" \"*/diffusion_pytorch_model.safetensors\" \"*/model.safetensors\""
                    .to_string()
            }
            Want::Encoder => "\"*.json\" \"*.txt\" \"model.safetensors\"".to_string(),
        };
        format!("hf download {}{rev} --include {patterns}", id.repo)
    }
}

/// Where the cache is, which endpoint, which token, and whether the network may be used:
/// read from the environment as huggingface_hub reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cache: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network.
    pub offline: bool,
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// `from_env` over any source of variables (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Settings {
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let xdg = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| "/".into())).join(".cache")
            });
            xdg.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let endpoint = var("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        Settings {
            cache,
            endpoint,
            token,
            offline,
        }
    }

    /// `<cache>/models--org--name`.
    pub fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.cache.join(id.folder_name())
    }

    /// The cached snapshot the id's revision points at (through `refs/<revision>`, or
    /// directly for a commit), whether complete or not.
    pub fn cached_snapshot(&self, id: &HubId) -> Option<PathBuf> {
        let repo = self.repo_dir(id);
        let commit = if id.revision_is_commit() {
            id.revision.clone()
        } else {
            std::fs::read_to_string(repo.join("refs").join(&id.revision))
                .ok()?
                .trim()
                .to_string()
        };
        let dir = repo.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }
}

/// What a download shows; `cli/progress.rs` draws it.
pub trait FetchProgress {
    /// A line for people (what is fetched from where, into where).
    fn note(&mut self, msg: &str);
    /// File `index` (from 1) of `count` starts: `size` bytes.
    fn file(&mut self, name: &str, index: usize, count: usize, size: u64);
    /// `n` more bytes of the current file are here (a resumed download first reports the
    /// bytes it already had).
    fn bytes(&mut self, n: u64);
    /// The current file is complete.
    fn file_done(&mut self);
}

/// No progress to show.
pub struct Quiet;

impl FetchProgress for Quiet {
    fn note(&mut self, _: &str) {}
    fn file(&mut self, _: &str, _: usize, _: usize, _: u64) {}
    fn bytes(&mut self, _: u64) {}
    fn file_done(&mut self) {}
}

/// The local folder (or file) of `spec`: the path itself when it exists; for an id, its
/// cached snapshot. Never touches the network: an id that is not cached (or only in part)
/// is an error that says how to get it. A path that is neither is returned as it is, for
/// the caller's own "does not exist".
pub fn locate(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = HubId::from_path(spec) else {
        return Ok(spec.to_path_buf());
    };
    let s = Settings::from_env();
    match s.cached_snapshot(&id) {
        Some(dir) => match check_snapshot(&dir) {
            Ok(()) => Ok(dir),
            Err(missing) => Err(not_cached(&id, &s, None, Some(missing))),
        },
        None => Err(not_cached(&id, &s, None, None)),
    }
}

/// `locate`, first downloading what the cached snapshot lacks (nothing when it is complete,
/// and never when `HF_HUB_OFFLINE` is set). Returns the local folder.
pub fn fetch(spec: &Path, want: &Want, progress: &mut dyn FetchProgress) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = HubId::from_path(spec) else {
        return Ok(spec.to_path_buf());
    };
    fetch_id(&id, want, &Settings::from_env(), progress)
}

/// [`fetch`] of an id with explicit settings.
pub fn fetch_id(
    id: &HubId,
    want: &Want,
    s: &Settings,
    progress: &mut dyn FetchProgress,
) -> Result<PathBuf> {
    let cached = s.cached_snapshot(id);
    let missing = match &cached {
        Some(dir) => match check_snapshot(dir) {
            Ok(()) => return Ok(dir.clone()),
            Err(m) => Some(m),
        },
        None => None,
    };
    if s.offline {
        return Err(not_cached(id, s, Some(want), missing));
    }
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(s.cache.clone()))
        .with_endpoint(s.endpoint.clone())
        .with_token(s.token.clone())
        .with_progress(false)
        .with_user_agent("moslora", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| Error::msg(format!("setting up the Hugging Face client: {e}")))?;
    let listing = list(&api.repo(model_repo(id, &id.revision)), id, want, s)?;
    // Download by commit, so that every file comes from the one snapshot.
    let repo = api.repo(model_repo(id, &listing.sha));
    let snapshot = s.repo_dir(id).join("snapshots").join(&listing.sha);
    // model_index.json first (a few hundred bytes, quietly): it names the pipeline's
    // components.
    let components = match listing.files.iter().find(|f| f.name == "model_index.json") {
        Some(f) => {
            let one = std::slice::from_ref(f);
            download_missing(&repo, id, want, s, &snapshot, one, &mut Quiet)?;
            Some(components(&snapshot.join("model_index.json"))?)
        }
        None => None,
    };
    let files = select_files(&listing.files, components.as_ref(), want.variant());
    if !files.iter().any(|f| f.name.ends_with(".safetensors")) {
        let pickles: Vec<&str> = listing
            .files
            .iter()
            .map(|f| f.name.as_str())
            .filter(|n| is_pickle(n))
            .take(3)
            .collect();
        let found = if pickles.is_empty() {
            String::new()
        } else {
            format!(" (it has {})", pickles.join(", "))
        };
        return Err(Error::setting(
            "model",
            format!(
                "{} has no .safetensors weights that moslora reads{found}: moslora never \
                 downloads pickled weights (.bin, .ckpt, .pt); pick a repository with \
                 .safetensors files",
                id.label()
            ),
        ));
    }
    let total: u64 = files
        .iter()
        .filter(|f| !snapshot.join(&f.name).exists())
        .filter_map(|f| f.size)
        .sum();
    let count = files
        .iter()
        .filter(|f| !snapshot.join(&f.name).exists())
        .count();
    if count > 0 {
        progress.note(&format!(
            "downloading {} ({count} files, {}) from {} into {}",
            id.label(),
            human_bytes(total),
            s.endpoint,
            s.repo_dir(id).display()
        ));
    }
    download_missing(&repo, id, want, s, &snapshot, &files, progress)?;
    write_ref(s, id, &listing.sha)?;
    check_snapshot(&snapshot).map_err(|m| {
        Error::msg(format!(
            "{}: the snapshot {} is still incomplete after downloading ({m})",
            id.label(),
            snapshot.display()
        ))
    })?;
    Ok(snapshot)
}

fn model_repo(id: &HubId, revision: &str) -> Repo {
    Repo::with_revision(id.repo.clone(), RepoType::Model, revision.to_string())
}

/// One file of a repository, as the hub's listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub size: Option<u64>,
    /// An LFS file's sha256: the etag its blob is named by.
    pub sha256: Option<String>,
}

impl RemoteFile {
    pub fn new(name: &str, size: Option<u64>) -> RemoteFile {
        RemoteFile {
            name: name.to_string(),
            size,
            sha256: None,
        }
    }
}

struct Listing {
    sha: String,
    files: Vec<RemoteFile>,
}

/// `GET /api/models/{id}/revision/{rev}?blobs=true`: the commit and the files with sizes.
fn list(repo: &ApiRepo, id: &HubId, want: &Want, s: &Settings) -> Result<Listing> {
    #[derive(Deserialize)]
    struct Lfs {
        size: Option<u64>,
        sha256: Option<String>,
    }
    #[derive(Deserialize)]
    struct Sibling {
        rfilename: String,
        size: Option<u64>,
        lfs: Option<Lfs>,
    }
    #[derive(Deserialize)]
    struct Info {
        sha: String,
        siblings: Vec<Sibling>,
    }
    let response = repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| request_error(e, id, want, s))?;
    let info: Info = response.into_json().map_err(|e| {
        Error::msg(format!(
            "{}: the hub at {} answered the listing of {} with something that is not a \
             repository listing ({e})",
            id.label(),
            s.endpoint,
            id.repo
        ))
    })?;
    let files = info
        .siblings
        .into_iter()
        .map(|f| {
            let (size, sha256) = match f.lfs {
                Some(l) => (l.size.or(f.size), l.sha256),
                None => (f.size, None),
            };
            RemoteFile {
                name: f.rfilename,
                size,
                sha256,
            }
        })
        .collect();
    Ok(Listing {
        sha: info.sha,
        files,
    })
}

/// Download the files the snapshot lacks, smallest kinds first (configs, tokenizers) and
/// the weights last, so an interrupted run leaves a snapshot that [`check_snapshot`] calls
/// incomplete. Each file's size is checked against the listing.
fn download_missing(
    repo: &ApiRepo,
    id: &HubId,
    want: &Want,
    s: &Settings,
    snapshot: &Path,
    files: &[RemoteFile],
    progress: &mut dyn FetchProgress,
) -> Result<()> {
    let todo: Vec<&RemoteFile> = files
        .iter()
        .filter(|f| !snapshot.join(&f.name).exists())
        .collect();
    let blobs = s.repo_dir(id).join("blobs");
    for (i, f) in todo.iter().enumerate() {
        // huggingface_hub's partial download (`<etag>.incomplete`) is resumed as hf-hub's
        // own (`<etag>.part`).
        if let Some(sha) = &f.sha256 {
            let theirs = blobs.join(format!("{sha}.incomplete"));
            let ours = blobs.join(format!("{sha}.part"));
            if theirs.is_file() && !ours.exists() {
                let _ = std::fs::rename(&theirs, &ours);
            }
        }
        let relay = Relay {
            progress: &mut *progress,
            name: &f.name,
            index: i + 1,
            count: todo.len(),
            started: false,
        };
        let path = repo
            .download_with_progress(&f.name, relay)
            .map_err(|e| api_error(e, id, want, s, &f.name))?;
        progress.file_done();
        let blob = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        // hf-hub leaves its lock file beside the blob; huggingface_hub keeps its own elsewhere.
        let _ = std::fs::remove_file(blob.with_extension("lock"));
        if let Some(size) = f.size {
            let got = std::fs::metadata(&blob)
                .map_err(|e| Error::io(&blob, e))?
                .len();
            if got != size {
                // A short file goes back to being partial, for the next run to resume.
                let _ = std::fs::remove_file(&path);
                if got < size {
                    let _ = std::fs::rename(&blob, blob.with_extension("part"));
                } else {
                    let _ = std::fs::remove_file(&blob);
                }
                return Err(Error::HubUnreachable {
                    id: id.label(),
                    endpoint: s.endpoint.clone(),
                    cause: format!(
                        "{} arrived with {got} bytes of {size}; run again to resume it",
                        f.name
                    ),
                    command: want.download_command(id),
                });
            }
        }
    }
    Ok(())
}

/// hf-hub's progress calls, passed on with the file's place in the list. hf-hub starts a
/// file twice (before and as it resumes, then reports the bytes already there): one bar.
struct Relay<'a> {
    progress: &'a mut dyn FetchProgress,
    name: &'a str,
    index: usize,
    count: usize,
    started: bool,
}

impl hf_hub::api::Progress for Relay<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        if !std::mem::replace(&mut self.started, true) {
            self.progress
                .file(self.name, self.index, self.count, size as u64);
        }
    }
    fn update(&mut self, size: usize) {
        self.progress.bytes(size as u64);
    }
    fn finish(&mut self) {}
}

/// `refs/<revision>` names the commit (not for a commit itself, as huggingface_hub does; the
/// `refs/<commit>` that downloading by commit leaves is taken away).
fn write_ref(s: &Settings, id: &HubId, sha: &str) -> Result<()> {
    let refs = s.repo_dir(id).join("refs");
    if !id.revision_is_commit() {
        let path = refs.join(&id.revision);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() != sha {
            crate::fsutil::write_bytes(&path, sha.as_bytes())?;
        }
    }
    if id.revision != sha {
        let _ = std::fs::remove_file(refs.join(sha));
    }
    Ok(())
}

/// The pipeline components `model_index.json` names (`unet`, `vae`, `tokenizer`, ...).
fn components(index: &Path) -> Result<BTreeSet<String>> {
    let text = crate::fsutil::read_to_string(index)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::config(index, format!("not JSON ({e})")))?;
    let map = v
        .as_object()
        .ok_or_else(|| Error::config(index, "expected a JSON object"))?;
    Ok(map
        .iter()
        .filter(|(k, v)| {
            !k.starts_with('_')
                && v.as_array()
                    .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.is_string()))
        })
        .map(|(k, _)| k.clone())
        .collect())
}

/// Whether a file holds pickled weights (never downloaded).
fn is_pickle(name: &str) -> bool {
    [".bin", ".ckpt", ".pt", ".pth", ".pkl"]
        .iter()
        .any(|x| name.ends_with(x))
}

/// A weight file's stem and variant: `diffusion_pytorch_model.fp16.safetensors` is
/// (`diffusion_pytorch_model`, `fp16`); shards (`model-00001-of-00002.safetensors`) and
/// their indexes (`model.safetensors.index.json`, `x.safetensors.index.fp16.json`) count
/// as their stem's. None for anything that is not `.safetensors` weights or their index.
fn weight_kind(file: &str) -> Option<(String, Option<String>)> {
    let is_index = file.ends_with(".json") && file.contains(".safetensors.index");
    if !file.ends_with(".safetensors") && !is_index {
        return None;
    }
    let mut parts = file.split('.');
    let stem = strip_shard(parts.next()?);
    let rest: Vec<&str> = parts
        .filter(|p| !matches!(*p, "safetensors" | "index" | "json"))
        .collect();
    let variant = match rest.as_slice() {
        [] => None,
        [v] => Some(strip_shard(v).to_string()),
        _ => return None,
    };
    Some((stem.to_string(), variant))
}

/// `model-00001-of-00002` -> `model`.
fn strip_shard(s: &str) -> &str {
    // "-NNNNN-of-NNNNN" at the end.
    if let Some(at) = s.rfind("-of-") {
        let tail = &s[at + 4..];
        if let Some(dash) = s[..at].rfind('-') {
            let num = &s[dash + 1..at];
            if !tail.is_empty()
                && !num.is_empty()
                && tail.bytes().all(|c| c.is_ascii_digit())
                && num.bytes().all(|c| c.is_ascii_digit())
            {
                return &s[..dash];
            }
        }
    }
    s
}

/// (folder, stem) -> the weight files there, each with its variant.
type WeightGroups<'a> =
    std::collections::BTreeMap<(String, String), Vec<(Option<String>, &'a RemoteFile)>>;

/// The files to download, small ones first: for a pipeline (`components` from its
/// model_index.json), `model_index.json` and, in each component's folder, its JSON and text
/// files (configs, tokenizers) and one variant of its `.safetensors` weights (`variant` when
/// there is one, else the plain weights, else whatever variant there is); for an encoder
/// (no model_index.json), the same at the repository's root. Never pickles, ONNX, Flax or
/// TensorFlow files, and no folders the pipeline does not name.
pub fn select_files(
    files: &[RemoteFile],
    components: Option<&BTreeSet<String>>,
    variant: Option<&str>,
) -> Vec<RemoteFile> {
    // (folder, name) of every file in a folder the reader looks in.
    let place = |f: &RemoteFile| -> Option<(String, String)> {
        match (components, f.name.split_once('/')) {
            (Some(_), None) => {
                (f.name == "model_index.json").then(|| (String::new(), f.name.clone()))
            }
            (Some(c), Some((dir, name))) => (c.contains(dir) && !name.contains('/'))
                .then(|| (dir.to_string(), name.to_string())),
            (None, None) => Some((String::new(), f.name.clone())),
            (None, Some(_)) => None,
        }
    };
    let mut small = Vec::new();
    // (folder, stem) -> the weight files of each variant.
    let mut weights: WeightGroups = Default::default();
    for f in files {
        let Some((dir, name)) = place(f) else {
            continue;
        };
        if let Some((stem, v)) = weight_kind(&name) {
            if WEIGHT_STEMS.contains(&stem.as_str()) {
                weights.entry((dir, stem)).or_default().push((v, f));
            }
            continue;
        }
        let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        if matches!(ext, "json" | "txt" | "model") && !name.contains(".index.") {
            small.push(f.clone());
        }
    }
    small.sort_by(|a, b| a.name.cmp(&b.name));
    let mut big = Vec::new();
    for group in weights.values() {
        let has = |v: Option<&str>| group.iter().any(|(gv, _)| gv.as_deref() == v);
        let chosen: Option<Option<&str>> = if variant.is_some() && has(variant) {
            Some(variant)
        } else if has(None) {
            Some(None)
        } else if has(Some("fp16")) {
            Some(Some("fp16"))
        } else {
            None
        };
        if let Some(v) = chosen {
            big.extend(
                group
                    .iter()
                    .filter(|(gv, _)| gv.as_deref() == v)
                    .map(|(_, f)| (*f).clone()),
            );
        }
    }
    // Indexes before their shards; then by name.
    big.sort_by_key(|f| (!f.name.ends_with(".json"), f.name.clone()));
    small.extend(big);
    small
}

/// Whether a snapshot holds a whole model: for a pipeline, every component model_index.json
/// names has its folder, and every folder with a `config.json` has its `.safetensors`
/// weights (all shards of a sharded one); for an encoder, `config.json` and weights at the
/// root. The error names what is missing.
pub fn check_snapshot(dir: &Path) -> std::result::Result<(), String> {
    let index = dir.join("model_index.json");
    let weights_in = |d: &Path| -> std::result::Result<(), String> {
        let rd = std::fs::read_dir(d).map_err(|_| format!("no {} folder", d.display()))?;
        let mut found = false;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((stem, _)) = weight_kind(&name) else {
                continue;
            };
            if !WEIGHT_STEMS.contains(&stem.as_str()) || !e.path().exists() {
                continue;
            }
            if name.ends_with(".json") {
                for shard in shards(&e.path())? {
                    if !d.join(&shard).exists() {
                        return Err(format!("{}", d.join(shard).display()));
                    }
                }
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(format!("the .safetensors weights in {}", d.display()))
        }
    };
    if index.exists() {
        let comps = components(&index).map_err(|e| e.to_string())?;
        for c in comps {
            let sub = dir.join(&c);
            if !sub.is_dir() {
                return Err(format!("the `{c}` folder"));
            }
            if sub.join("config.json").exists() {
                weights_in(&sub)?;
            }
        }
        Ok(())
    } else if dir.join("config.json").exists() {
        weights_in(dir)
    } else {
        Err("model_index.json (or config.json)".to_string())
    }
}

/// The shard files a `.safetensors.index.json` names.
fn shards(index: &Path) -> std::result::Result<BTreeSet<String>, String> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let idx: Index =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    Ok(idx.weight_map.into_values().collect())
}

/// The id of a snapshot folder in a Hugging Face cache (`.../models--org--name/snapshots/<commit>`),
/// for naming the model after it rather than after its commit.
pub fn id_of_snapshot(path: &Path) -> Option<String> {
    let commit = path.file_name()?.to_str()?;
    let snapshots = path.parent()?;
    if snapshots.file_name()? != "snapshots" || !is_commit(commit) {
        return None;
    }
    let folder = snapshots.parent()?.file_name()?.to_str()?;
    let (org, name) = folder.strip_prefix("models--")?.split_once("--")?;
    Some(format!("{org}/{name}"))
}

fn not_cached(id: &HubId, s: &Settings, want: Option<&Want>, missing: Option<String>) -> Error {
    let want = want.cloned().unwrap_or(Want::Pipeline { variant: None });
    Error::HubNotCached {
        id: id.label(),
        cache: s.repo_dir(id),
        offline: s.offline,
        missing,
        command: want.download_command(id),
    }
}

/// An hf-hub failure as the error a person can act on.
fn api_error(
    e: hf_hub::api::sync::ApiError,
    id: &HubId,
    want: &Want,
    s: &Settings,
    file: &str,
) -> Error {
    use hf_hub::api::sync::ApiError;
    match e {
        ApiError::RequestError(b) => request_error(*b, id, want, s),
        ApiError::IoError(io) => {
            let blobs = s.repo_dir(id).join("blobs");
            crate::fsutil::no_space(Error::io(&blobs, io), &blobs, None)
        }
        ApiError::LockAcquisition(path) => Error::Locked {
            dir: path,
            holder: format!("another download of {file}"),
        },
        other => Error::HubUnreachable {
            id: id.label(),
            endpoint: s.endpoint.clone(),
            cause: format!("{file}: {other}"),
            command: want.download_command(id),
        },
    }
}

/// An HTTP failure: not found, gated (or private), or the hub out of reach.
fn request_error(e: ureq::Error, id: &HubId, want: &Want, s: &Settings) -> Error {
    match e {
        ureq::Error::Status(code, response) => {
            let error_code = response.header("X-Error-Code").unwrap_or("").to_string();
            // The hub says which in X-Error-Code (a missing repository is a 401 without a
            // token); without one, 401 and 403 mean no access and 404 nothing there.
            let not_found = matches!(
                error_code.as_str(),
                "RepoNotFound" | "RevisionNotFound" | "EntryNotFound"
            );
            match (code, error_code.as_str()) {
                (_, "GatedRepo") | (401 | 403, _) if !not_found => Error::HubGated {
                    id: id.label(),
                    page: format!("{}/{}", s.endpoint, id.repo),
                    token_sent: s.token.is_some(),
                },
                (404, _) | (401 | 403, _) => Error::HubNotFound {
                    id: id.label(),
                    endpoint: s.endpoint.clone(),
                    what: match error_code.as_str() {
                        "RevisionNotFound" => format!("it has no revision `{}`", id.revision),
                        "EntryNotFound" => "a file it listed is not there".to_string(),
                        _ if s.token.is_some() => {
                            "no such repository, or the token in HF_TOKEN cannot see it".to_string()
                        }
                        _ => "no such repository (or a private one: set HF_TOKEN)".to_string(),
                    },
                },
                _ => Error::HubUnreachable {
                    id: id.label(),
                    endpoint: s.endpoint.clone(),
                    cause: format!("the hub answered HTTP {code}"),
                    command: want.download_command(id),
                },
            }
        }
        ureq::Error::Transport(t) => Error::HubUnreachable {
            id: id.label(),
            endpoint: s.endpoint.clone(),
            cause: t.to_string(),
            command: want.download_command(id),
        },
    }
}

/// "1.2 GB", "34.5 MB", "12 KB".
fn human_bytes(b: u64) -> String {
    if b >= 1_000_000_000 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else if b >= 1_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{} KB", b.div_ceil(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(names: &[&str]) -> Vec<RemoteFile> {
        names.iter().map(|n| RemoteFile::new(n, None)).collect()
    }

    fn names(v: &[RemoteFile]) -> Vec<&str> {
        v.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn ids_parse_and_paths_do_not() {
        let id = HubId::parse("stabilityai/stable-diffusion-xl-base-1.0").unwrap();
        assert_eq!(id.repo, "stabilityai/stable-diffusion-xl-base-1.0");
        assert_eq!(id.revision, "main");
        assert_eq!(
            id.folder_name(),
            "models--stabilityai--stable-diffusion-xl-base-1.0"
        );
        let id = HubId::parse("openai/clip-vit-base-patch32@refs/pr/3").unwrap();
        assert_eq!(id.revision, "refs/pr/3");
        assert_eq!(id.label(), "openai/clip-vit-base-patch32@refs/pr/3");
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert!(HubId::parse(&format!("a/b@{c}"))
            .unwrap()
            .revision_is_commit());
        for not in [
            "sdxl",
            "./org/name",
            "/org/name",
            "org/name/unet",
            "../org",
            "org/",
            "/name",
            "org/name.safetensors",
            "ckpts/model.ckpt",
            "org/na me",
            "org/a--b",
            "org/name@",
            "org/name@../x",
            "-org/name",
            "",
        ] {
            assert_eq!(HubId::parse(not), None, "{not}");
        }
    }

    #[test]
    fn settings_follow_huggingface_hub() {
        let vars = |pairs: &[(&str, &str)]| {
            let m: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::from_vars(move |k| m.get(k).cloned())
        };
        let s = vars(&[("HOME", "/home/a")]);
        assert_eq!(s.cache, PathBuf::from("/home/a/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert!(!s.offline);
        let s = vars(&[
            ("HOME", "/home/a"),
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
        ]);
        assert_eq!(s.cache, PathBuf::from("/hf/hub"));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        let s = vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "true"),
        ]);
        assert_eq!(s.cache, PathBuf::from("/c"));
        assert!(s.offline);
        for (v, off) in [
            ("1", true),
            ("ON", true),
            ("yes", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(vars(&[("HF_HUB_OFFLINE", v)]).offline, off, "{v}");
        }
        // The token: HF_TOKEN, else the token file under HF_HOME.
        let dir = std::env::temp_dir().join(format!("moslora-hub-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_file\n").unwrap();
        let home = dir.to_str().unwrap();
        assert_eq!(vars(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
        assert_eq!(
            vars(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
        assert_eq!(vars(&[("HF_HOME", "/nonexistent")]).token, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const SDXL: &[&str] = &[
        ".gitattributes",
        "README.md",
        "model_index.json",
        "sd_xl_base_1.0.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.onnx",
        "text_encoder/model.safetensors",
        "text_encoder/openvino_model.bin",
        "text_encoder/openvino_model.xml",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "text_encoder_2/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_flax_model.msgpack",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae_1_0/config.json",
        "vae_1_0/diffusion_pytorch_model.safetensors",
        "vae_decoder/config.json",
        "vae_decoder/model.onnx",
    ];

    fn sdxl_components() -> BTreeSet<String> {
        [
            "scheduler",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "unet",
            "vae",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn a_pipeline_gets_its_configs_tokenizers_and_one_variant() {
        let c = sdxl_components();
        let full = select_files(&f(SDXL), Some(&c), None);
        let got = names(&full);
        let small: Vec<&str> = got[..got.len() - 4].to_vec();
        assert_eq!(
            small,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder_2/config.json",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "tokenizer_2/merges.txt",
                "tokenizer_2/special_tokens_map.json",
                "tokenizer_2/tokenizer_config.json",
                "tokenizer_2/vocab.json",
                "unet/config.json",
                "vae/config.json",
            ]
        );
        assert_eq!(
            got[got.len() - 4..],
            [
                "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
        let half = select_files(&f(SDXL), Some(&c), Some("fp16"));
        let weights: Vec<&str> = names(&half)
            .into_iter()
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        assert_eq!(
            weights,
            [
                "text_encoder/model.fp16.safetensors",
                "text_encoder_2/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ]
        );
        for n in names(&full).into_iter().chain(names(&half)) {
            assert!(
                !is_pickle(n) && !n.ends_with(".onnx") && !n.starts_with("vae_"),
                "{n}"
            );
        }
    }

    #[test]
    fn variants_fall_back_and_shards_come_whole() {
        let c: BTreeSet<String> = ["unet".to_string()].into();
        // Only fp16 there: taken even for f32 (the reader converts).
        let only_half = f(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
        ]);
        assert_eq!(
            names(&select_files(&only_half, Some(&c), None))[2],
            "unet/diffusion_pytorch_model.fp16.safetensors"
        );
        // fp16 asked, none there: the plain weights.
        let plain = f(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
        ]);
        assert_eq!(
            names(&select_files(&plain, Some(&c), Some("fp16")))[2],
            "unet/diffusion_pytorch_model.safetensors"
        );
        let sharded = f(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
            "unet/diffusion_pytorch_model.bin.index.json",
        ]);
        assert_eq!(
            names(&select_files(&sharded, Some(&c), None))[2..],
            [
                "unet/diffusion_pytorch_model.safetensors.index.json",
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            ]
        );
        assert_eq!(
            names(&select_files(&sharded, Some(&c), Some("fp16")))[2..],
            [
                "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
                "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
            ]
        );
    }

    #[test]
    fn an_encoder_gets_its_root_files() {
        let clip = f(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "flax_model.msgpack",
            "merges.txt",
            "model.safetensors",
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.bin",
            "preprocessor_config.json",
            "pytorch_model.bin",
            "special_tokens_map.json",
            "tf_model.h5",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
        ]);
        assert_eq!(
            names(&select_files(&clip, None, None)),
            [
                "config.json",
                "merges.txt",
                "preprocessor_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.json",
                "model.safetensors",
            ]
        );
        // Pickles only: nothing to read.
        let bin = f(&["config.json", "pytorch_model.bin"]);
        assert!(!select_files(&bin, None, None)
            .iter()
            .any(|f| f.name.ends_with(".safetensors")));
    }

    #[test]
    fn snapshot_folders_name_their_id() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let p = PathBuf::from(format!(
            "/c/hub/models--stabilityai--sdxl-base/snapshots/{c}"
        ));
        assert_eq!(id_of_snapshot(&p).as_deref(), Some("stabilityai/sdxl-base"));
        assert_eq!(id_of_snapshot(Path::new("/models/sdxl")), None);
    }

    #[test]
    fn a_partial_snapshot_is_not_complete() {
        let dir = std::env::temp_dir().join(format!("moslora-hub-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("unet")).unwrap();
        std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
        std::fs::write(
            dir.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "image_encoder": [null, null]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer/vocab.json"), "{}").unwrap();
        std::fs::write(dir.join("unet/config.json"), "{}").unwrap();
        assert!(check_snapshot(&dir).unwrap_err().contains("weights"));
        std::fs::write(dir.join("unet/diffusion_pytorch_model.safetensors.index.json"),
            r#"{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors", "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#).unwrap();
        std::fs::write(
            dir.join("unet/diffusion_pytorch_model-00001-of-00002.safetensors"),
            "",
        )
        .unwrap();
        assert!(check_snapshot(&dir).unwrap_err().contains("00002-of-00002"));
        std::fs::write(
            dir.join("unet/diffusion_pytorch_model-00002-of-00002.safetensors"),
            "",
        )
        .unwrap();
        assert_eq!(check_snapshot(&dir), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn weight_names() {
        let k = |s: &str| weight_kind(s);
        assert_eq!(k("model.safetensors"), Some(("model".into(), None)));
        assert_eq!(
            k("diffusion_pytorch_model.fp16.safetensors"),
            Some(("diffusion_pytorch_model".into(), Some("fp16".into())))
        );
        assert_eq!(
            k("model-00001-of-00003.safetensors"),
            Some(("model".into(), None))
        );
        assert_eq!(
            k("model.safetensors.index.json"),
            Some(("model".into(), None))
        );
        assert_eq!(k("config.json"), None);
        assert_eq!(k("pytorch_model.bin"), None);
        assert_eq!(strip_shard("x-1-of-2"), "x");
        assert_eq!(strip_shard("stable-diffusion"), "stable-diffusion");
    }
}
