//! A stand-in for the Hugging Face hub on 127.0.0.1, for `HF_ENDPOINT`: the routes
//! huggingface_hub and hf-hub use (`/api/models/{id}/revision/{rev}`,
//! `/api/models/{id}/tree/{rev}`, `/{id}/resolve/{rev}/{file}` with HEAD and Range), with the
//! headers they read (`X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `X-Linked-Size`,
//! `Content-Range`, `X-Error-Code`). It logs every request, can hold a file's download
//! still after its first half (for a killed download), and gates repositories behind a token.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use sha2::{Digest, Sha256};

/// One repository the stand-in serves.
pub struct Repo {
    pub commit: String,
    pub files: BTreeMap<String, Bytes>,
    /// A gated repository: served only with `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Repo {
    /// The files of a folder (recursively), plus `extra` (name, bytes).
    pub fn from_dir(id: &str, dir: &Path, extra: &[(&str, &[u8])]) -> Repo {
        let mut files = BTreeMap::new();
        add_dir(dir, dir, &mut files);
        for (name, bytes) in extra {
            files.insert(name.to_string(), Bytes::copy_from_slice(bytes));
        }
        Repo {
            commit: hex(&Sha256::digest(id.as_bytes()))[..40].to_string(),
            files,
            token: None,
        }
    }
}

fn add_dir(root: &Path, dir: &Path, files: &mut BTreeMap<String, Bytes>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            add_dir(root, &p, files);
        } else {
            let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            files.insert(name, Bytes::from(std::fs::read(&p).unwrap()));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a file is served as: LFS (`.safetensors`, etag = sha256, as the hub has them) or a
/// plain git file (etag = a 40-hex blob id).
fn etag(name: &str, bytes: &[u8]) -> (String, bool) {
    let sha = hex(&Sha256::digest(bytes));
    if name.ends_with(".safetensors") || name.ends_with(".bin") {
        (sha, true)
    } else {
        (sha[..40].to_string(), false)
    }
}

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct Inner {
    repos: BTreeMap<String, Repo>,
    log: Mutex<Vec<Seen>>,
    /// A file whose whole-file GET sends half its bytes and then hangs.
    stall: Mutex<Option<String>>,
}

pub struct Hub {
    pub url: String,
    inner: Arc<Inner>,
}

impl Hub {
    /// Serve `repos` (id -> repository) on a free port of 127.0.0.1.
    pub fn start(repos: Vec<(&str, Repo)>) -> Hub {
        let inner = Arc::new(Inner {
            repos: repos.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Hub { url, inner }
    }

    /// The requests so far, and forget them.
    pub fn take_log(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.inner.log.lock().unwrap())
    }

    /// The files downloaded (GET of `resolve`, not the one-byte probes), in order.
    pub fn downloads(log: &[Seen]) -> Vec<String> {
        log.iter()
            .filter(|s| s.method == "GET" && s.path.contains("/resolve/"))
            .filter(|s| s.range.as_deref() != Some("bytes=0-0"))
            .map(|s| s.path.splitn(6, '/').nth(5).unwrap_or("").to_string())
            .collect()
    }

    /// Hold `file`'s next whole downloads after their first half (None: serve normally).
    pub fn stall(&self, file: Option<&str>) {
        *self.inner.stall.lock().unwrap() = file.map(str::to_string);
    }
}

fn error(status: StatusCode, code: &str, msg: &str) -> Response {
    Response::builder()
        .status(status)
        .header("X-Error-Code", code)
        .header("Content-Type", "application/json")
        .body(Body::from(format!("{{\"error\": \"{msg}\"}}")))
        .unwrap()
}

fn json(v: serde_json::Value) -> Response {
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn handle(
    State(st): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.log.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        range: range.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (api, rest) = match parts.as_slice() {
        ["api", "models", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    if rest.len() < 4 {
        return error(StatusCode::NOT_FOUND, "RepoNotFound", "no such route");
    }
    let id = format!("{}/{}", rest[0], rest[1]);
    let Some(repo) = st.repos.get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        );
    };
    if let Some(token) = &repo.token {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            None => return error(StatusCode::UNAUTHORIZED, "GatedRepo", "gated: log in"),
            Some(a) if a != format!("Bearer {token}") => {
                return error(StatusCode::FORBIDDEN, "GatedRepo", "gated: not accepted")
            }
            Some(_) => {}
        }
    }
    // `main` or the commit; the rest of the path after the revision.
    let (rev, tail) = match rest[3..].split_first() {
        Some((r, t)) => (*r, t.join("/")),
        None => ("", String::new()),
    };
    if rev != "main" && rev != repo.commit {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    }
    let entry = |name: &String, bytes: &Bytes| {
        let (etag, lfs) = etag(name, bytes);
        let mut v = serde_json::json!({"size": bytes.len(), "blobId": etag});
        if lfs {
            v["lfs"] = serde_json::json!({"oid": etag, "size": bytes.len(), "pointerSize": 134});
        }
        v
    };
    match (api, rest[2]) {
        (true, "revision") => {
            let siblings: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|(n, b)| {
                    let mut v = entry(n, b);
                    v["rfilename"] = n.clone().into();
                    // The listing spells the LFS hash `sha256`, the tree `oid`.
                    if let Some(lfs) = v.get_mut("lfs") {
                        lfs["sha256"] = lfs["oid"].take();
                    }
                    v
                })
                .collect();
            json(serde_json::json!({
                "_id": "0", "id": id, "modelId": id, "sha": repo.commit, "private": false,
                "gated": repo.token.is_some(), "disabled": false, "downloads": 0, "likes": 0,
                "tags": [], "library_name": "diffusers", "siblings": siblings,
            }))
        }
        (true, "tree") => {
            let prefix = if tail.is_empty() {
                String::new()
            } else {
                format!("{tail}/")
            };
            let files: Vec<serde_json::Value> = repo
                .files
                .iter()
                .filter(|(n, _)| n.starts_with(&prefix))
                .map(|(n, b)| {
                    let mut v = entry(n, b);
                    v["type"] = "file".into();
                    v["path"] = n.clone().into();
                    v["oid"] = v["blobId"].clone();
                    v
                })
                .collect();
            json(serde_json::Value::Array(files))
        }
        (false, "resolve") => {
            let Some(bytes) = repo.files.get(&tail) else {
                return error(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found");
            };
            serve_file(&st, &repo.commit, &tail, bytes, &method, range.as_deref())
        }
        _ => error(StatusCode::NOT_FOUND, "RepoNotFound", "no such route"),
    }
}

fn serve_file(
    st: &Inner,
    commit: &str,
    name: &str,
    bytes: &Bytes,
    method: &Method,
    range: Option<&str>,
) -> Response {
    let total = bytes.len() as u64;
    let (etag, lfs) = etag(name, bytes);
    let mut b = Response::builder()
        .header("X-Repo-Commit", commit)
        .header("ETag", format!("\"{etag}\""))
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream");
    if lfs {
        b = b
            .header("X-Linked-Etag", format!("\"{etag}\""))
            .header("X-Linked-Size", total.to_string());
    }
    // `bytes=a-` or `bytes=a-b`.
    let span = range.and_then(|r| {
        let (a, z) = r.strip_prefix("bytes=")?.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let z: u64 = if z.is_empty() {
            total.saturating_sub(1)
        } else {
            z.parse().ok()?
        };
        (a <= z && z < total).then_some((a, z))
    });
    let (status, body) = match span {
        Some((a, z)) => {
            b = b.header("Content-Range", format!("bytes {a}-{z}/{total}"));
            (
                StatusCode::PARTIAL_CONTENT,
                bytes.slice(a as usize..=z as usize),
            )
        }
        None => (StatusCode::OK, bytes.clone()),
    };
    let whole_from_start = span.is_none_or(|(a, z)| a == 0 && z + 1 == total);
    let stalled = st.stall.lock().unwrap().as_deref() == Some(name);
    if *method == Method::GET && whole_from_start && stalled && total > 1 {
        // The first half, then nothing: the client sits there until it is killed.
        let half = body.slice(..body.len() / 2);
        let stream = futures_util::stream::unfold(0u8, move |state| {
            let half = half.clone();
            async move {
                match state {
                    0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        None
                    }
                }
            }
        });
        return b
            .status(status)
            .header("Content-Length", HeaderValue::from(body.len() as u64))
            .body(Body::from_stream(stream))
            .unwrap();
    }
    b.status(status).body(Body::from(body)).unwrap()
}
