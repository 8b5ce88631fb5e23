//! The app's HTTP routes. Pages are `GET`; every change is a `POST` (or a `PUT` of a photo's
//! bytes) to `/api/...` from the pages' script, refused unless it comes from this server's
//! own pages: `Host` one of this server's names, `Origin` the same, and the page's CSRF token
//! in `X-CSRF-Token`. With `--password`, every request needs it (HTTP Basic). Clients name
//! subjects, photos, models and jobs by number only: a path never travels.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::jobs::{self, JobFiles};
use super::store::Store;
use super::{pages, photos, presets, AppOptions};
use crate::error::Result;
use crate::serve::files::SafeFiles;
use crate::serve::http::{bad, declared_length, harden_strict, internal, same_origin, ApiError};
use crate::serve::tokens::{digest, new_token};

/// What every request shares.
pub struct AppState {
    pub data: PathBuf,
    pub exe: PathBuf,
    pub store: Arc<Mutex<Store>>,
    /// The token every page carries and every change must present.
    pub csrf: String,
    /// The names `Host` may carry (loopback names, or the bound address); none: any.
    pub hosts: Vec<String>,
    /// The address the app listens on (a study it serves listens on the same interface).
    pub ip: std::net::IpAddr,
    password: Option<[u8; 32]>,
}

impl AppState {
    pub fn new(
        o: &AppOptions,
        store: Arc<Mutex<Store>>,
        addr: std::net::SocketAddr,
    ) -> Result<AppState> {
        let hosts = if o.public {
            Vec::new()
        } else {
            let mut h = vec!["localhost".to_string(), "127.0.0.1".into(), "[::1]".into()];
            let ip = match addr.ip() {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            };
            h.push(ip);
            h
        };
        Ok(AppState {
            data: o.data.clone(),
            exe: o.exe.clone(),
            store,
            csrf: new_token()?,
            hosts,
            ip: addr.ip(),
            password: o.password.as_deref().map(digest),
        })
    }

    pub fn db(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type S = State<Arc<AppState>>;

pub fn router(app: Arc<AppState>) -> Router {
    let limit = photos::MAX_UPLOAD_BYTES + 4096;
    Router::new()
        .route("/", get(|| async { Redirect::to("/queue") }))
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", pages::APP_JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", pages::APP_CSS) }),
        )
        .route("/subjects", get(subjects_page))
        .route("/subjects/{id}", get(subject_page))
        .route("/photos/{id}/thumb", get(photo_thumb))
        .route("/models", get(models_page))
        .route("/new", get(new_page))
        .route("/queue", get(queue_page))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/results", get(results_page))
        .route("/jobs/{id}/image/{n}", get(job_image))
        .route("/jobs/{id}/sample/{kind}/{step}", get(job_sample))
        .route("/jobs/{id}/download/{what}", get(download))
        .route("/api/subjects", post(add_subject))
        .route("/api/subjects/{id}", post(edit_subject))
        .route("/api/subjects/{id}/photos", put(upload_photo))
        .route("/api/photos/{id}/caption", post(edit_caption))
        .route("/api/photos/{id}/remove", post(remove_photo))
        .route("/api/photos/{id}/replace", put(replace_photo))
        .route("/api/models", post(add_model))
        .route("/api/preview", post(preview))
        .route("/api/check", post(check_yaml))
        .route("/api/jobs", post(add_job))
        .route("/jobs/{id}/study", get(study_page))
        .route("/api/jobs/{id}/study", post(make_study))
        .route("/api/jobs/{id}", get(job_json))
        .route("/api/jobs/{id}/{action}", post(job_action))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, declared_length))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::middleware::map_response(harden_strict))
        .with_state(app)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The password (when there is one), this server's Host, and for changes the same Origin and
/// the CSRF token.
async fn guard(State(app): S, req: Request, next: Next) -> Response {
    if let Some(want) = &app.password {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()));
        let ok = given.is_some_and(|p| bool::from(digest(&p).ct_eq(want)));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"moslora app\"")],
                "the app's password is needed",
            )
                .into_response();
        }
    }
    if let Err(why) = same_origin(req.method(), req.headers(), &app.hosts) {
        return ApiError(StatusCode::FORBIDDEN, format!("refused: {why}")).into_response();
    }
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if changes {
        let token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(token.as_bytes().ct_eq(app.csrf.as_bytes())) {
            return ApiError(
                StatusCode::FORBIDDEN,
                "refused: no valid CSRF token (reload the page)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Runs `f` on the database off the async workers.
async fn with_db<T: Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&AppState, &Store) -> Result<T> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let db = app.db();
        f(&app, &db)
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        crate::Error::Setting { .. }
        | crate::Error::Config { .. }
        | crate::Error::BadFile { .. } => bad(e.to_string()),
        e => internal(e),
    })
}

fn page(body: std::result::Result<String, ApiError>) -> Response {
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], b).into_response(),
        Err(e) => e.into_response(),
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no such {what}"))
}

async fn subjects_page(State(app): S) -> Response {
    page(with_db(&app, pages::subjects).await)
}
async fn subject_page(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    page(with_db(&app, move |a, db| pages::subject(a, db, id)).await)
}
async fn models_page(State(app): S) -> Response {
    page(with_db(&app, pages::models).await)
}
async fn new_page(State(app): S) -> Response {
    page(with_db(&app, pages::new_job).await)
}
async fn queue_page(State(app): S) -> Response {
    page(with_db(&app, pages::queue).await)
}
async fn job_page(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    page(with_db(&app, move |a, db| pages::job(a, db, id)).await)
}
async fn results_page(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    page(with_db(&app, move |a, db| pages::results(a, db, id)).await)
}

async fn photo_thumb(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    let r = with_db(&app, move |a, db| {
        let Some(p) = db.photo(id)? else {
            return Ok(None);
        };
        if !photos::app_made_name(&p.file) {
            return Ok(None);
        }
        let stem = p.file.split('.').next().unwrap_or("");
        let path = photos::thumbs_dir(&a.data, p.subject).join(format!("{stem}.png"));
        Ok(std::fs::read(path).ok())
    })
    .await;
    match r {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Ok(None) => not_found("photo").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Serves `rel` inside `root` through the shared safe file serving (no `..`, no symlink).
async fn safe_file(root: PathBuf, rel: String) -> Response {
    let Ok(files) = SafeFiles::new(&root, &[]) else {
        return not_found("file").into_response();
    };
    match files.resolve(&format!("/{}", crate::html::url(&rel))) {
        Some((path, kind)) => match tokio::fs::read(&path).await {
            Ok(b) => ([(header::CONTENT_TYPE, kind)], b).into_response(),
            Err(_) => not_found("file").into_response(),
        },
        None => not_found("file").into_response(),
    }
}

/// Image `n` of a job's render manifest.
async fn job_image(State(app): S, UrlPath((id, n)): UrlPath<(i64, usize)>) -> Response {
    let render = JobFiles::new(&app.data, id).out().join("renders");
    let file = tokio::task::spawn_blocking({
        let render = render.clone();
        move || {
            crate::render::manifest::Manifest::read(&render)
                .ok()
                .and_then(|m| m.images.get(n).map(|i| i.file.clone()))
        }
    })
    .await
    .ok()
    .flatten();
    match file {
        Some(f) => safe_file(render, f).await,
        None => not_found("image").into_response(),
    }
}

/// The training sample of adapter `kind` (`lora`, `moslora`) at `step`.
async fn job_sample(
    State(app): S,
    UrlPath((id, kind, step)): UrlPath<(i64, String, u64)>,
) -> Response {
    if !presets::adapters().iter().any(|k| k.0 == kind) {
        return not_found("sample").into_response();
    }
    let out = JobFiles::new(&app.data, id).out();
    safe_file(out, format!("{kind}/samples/step_{step:06}.png")).await
}

/// An adapter (`lora`, `moslora`, ...), or its kohya (`kohya-lora`, ...) or diffusers export
/// (`diffusers-lora`, ...); the model with it merged in (`merged-lora`, ...).
async fn download(State(app): S, UrlPath((id, what)): UrlPath<(i64, String)>) -> Response {
    if let Some(kind) = what.strip_prefix("merged-") {
        return merged(app.clone(), id, kind.to_string()).await;
    }
    let r = with_db(&app, move |a, _db| {
        let out = JobFiles::new(&a.data, id).out();
        // `KIND`, `kohya-KIND` or `diffusers-KIND`, KIND one of the trainer's adapter kinds.
        let (format, name) = match what.split_once('-') {
            Some((f @ ("kohya" | "diffusers"), k)) => (Some(f), k),
            Some(_) => return Ok(None),
            None => (None, what.as_str()),
        };
        let Some(&(kind, _)) = presets::adapters().iter().find(|k| k.0 == name) else {
            return Ok(None);
        };
        let adapter = out.join(kind).join("adapter.safetensors");
        if !adapter.is_file() {
            return Ok(None);
        }
        let Some(format) = format else {
            return Ok(Some((
                format!("job{id}-{kind}.safetensors"),
                std::fs::read(&adapter).map_err(|e| crate::Error::io(&adapter, e))?,
            )));
        };
        let name = format!("job{id}-{kind}-{format}.safetensors");
        let dest = a.data.join("exports").join(&name);
        use crate::adapter::export::{export, ExportFormat};
        // Named for the job's own model's blocks, as `moslora export --model` does.
        let cfg = crate::config::RunConfig::load(&JobFiles::new(&a.data, id).run_yaml())?;
        let model = crate::sdxl::convert::open_model(&cfg.model, None)?;
        let layout = crate::sdxl::sgm_names::Layout::unet(&model.unet_config()?);
        export(&adapter, ExportFormat::parse(format)?, &dest, &layout)?;
        let bytes = std::fs::read(&dest).map_err(|e| crate::Error::io(&dest, e))?;
        Ok(Some((name, bytes)))
    })
    .await;
    match r {
        Ok(Some((name, bytes))) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => not_found("download").into_response(),
        Err(e) => e.into_response(),
    }
}

/// One merge at a time (a merged SDXL is 7 GB): the second asker waits, then finds it made.
static MERGING: Mutex<()> = Mutex::new(());

/// The job's model with adapter `kind` merged in, as `moslora merge` writes it (one
/// `.safetensors` file, the model's dtype), made once into `exports/` and sent as a stream.
/// Made outside the database's lock: the app answers meanwhile.
async fn merged(app: Arc<AppState>, id: i64, kind: String) -> Response {
    if !super::presets::adapters().iter().any(|k| k.0 == kind) {
        return not_found("download").into_response();
    }
    let made = tokio::task::spawn_blocking(move || -> Result<Option<(String, PathBuf)>> {
        let files = JobFiles::new(&app.data, id);
        let adapter = files.out().join(&kind).join("adapter.safetensors");
        if !adapter.is_file() {
            return Ok(None);
        }
        let name = format!("job{id}-{kind}-merged.safetensors");
        let dest = app.data.join("exports").join(&name);
        let _one = MERGING.lock().unwrap_or_else(|p| p.into_inner());
        // Made again when older than the adapter (a job id used again after a removal).
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&dest).is_none() || modified(&dest) < modified(&adapter) {
            let cfg = crate::config::RunConfig::load(&files.run_yaml())?;
            let model = crate::sdxl::convert::open_model(&cfg.model, None)?;
            let o = crate::sdxl::convert::WriteOptions {
                dtype: None,
                force: true,
            };
            crate::adapter::merged_model::merge(&model, &adapter, 1.0, &dest, &o)?;
        }
        Ok(Some((name, dest)))
    })
    .await;
    match made {
        Ok(Ok(Some((name, path)))) => stream_file(&path, &name),
        Ok(Ok(None)) => not_found("download").into_response(),
        Ok(Err(e)) => internal(e).into_response(),
        Err(e) => internal(e).into_response(),
    }
}

/// A file sent as an attachment, a megabyte at a time (never whole in memory).
fn stream_file(path: &std::path::Path, name: &str) -> Response {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return internal(crate::Error::io(path, e)).into_response(),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let chunks = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf);
            (f, buf, n)
        })
        .await;
        match read {
            Ok((f, mut buf, Ok(n))) if n > 0 => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Ok((_, _, Err(e))) => Some((Err(e), None)),
            _ => None,
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// The job's events as they are written (all of them first), and its state when it changes.
async fn job_events(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    let files = JobFiles::new(&app.data, id);
    if !files.dir.is_dir() {
        return not_found("job").into_response();
    }
    let events = files.events();
    let stream = futures_util::stream::unfold(
        (app, events, 0u64, String::new(), true),
        move |(app, path, mut offset, mut last_state, mut first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                first = false;
                let mut out: Vec<Event> = Vec::new();
                if let Ok(bytes) = tokio::fs::read(&path).await {
                    if (bytes.len() as u64) > offset {
                        let new = &bytes[offset as usize..];
                        // Whole lines only; a line being written waits for the next look.
                        if let Some(end) = new.iter().rposition(|&b| b == b'\n') {
                            let text = String::from_utf8_lossy(&new[..end]);
                            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                                out.push(Event::default().event("progress").data(line));
                            }
                            offset += end as u64 + 1;
                        }
                    }
                }
                let app2 = app.clone();
                let job = tokio::task::spawn_blocking(move || app2.db().job(id))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
                if let Some(j) = job {
                    let state = format!("{}|{}", j.state, j.message);
                    if state != last_state {
                        last_state = state;
                        let v = json!({ "state": j.state, "message": j.message, "exit_code": j.exit_code });
                        out.push(Event::default().event("state").data(v.to_string()));
                    }
                }
                if !out.is_empty() {
                    let batch = futures_util::stream::iter(
                        out.into_iter().map(Ok::<_, std::convert::Infallible>),
                    );
                    return Some((batch, (app, path, offset, last_state, first)));
                }
            }
        },
    );
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Deserialize)]
struct SubjectForm {
    name: String,
    class: String,
    identifier: String,
}

fn check_text(field: &str, s: &str, max: usize) -> std::result::Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(bad(format!(
            "{field}: 1 to {max} characters, no control characters"
        )));
    }
    Ok(t.to_string())
}

async fn add_subject(State(app): S, Json(f): Json<SubjectForm>) -> Response {
    let r = async {
        let name = check_text("name", &f.name, 100)?;
        let class = check_text("class", &f.class, 60)?;
        let ident = check_text("identifier", &f.identifier, 30)?;
        with_db(&app, move |_, db| db.add_subject(&name, &class, &ident)).await
    }
    .await;
    match r {
        Ok(id) => Json(json!({ "id": id, "url": format!("/subjects/{id}") })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn edit_subject(
    State(app): S,
    UrlPath(id): UrlPath<i64>,
    Json(f): Json<SubjectForm>,
) -> Response {
    let r = async {
        let name = check_text("name", &f.name, 100)?;
        let class = check_text("class", &f.class, 60)?;
        let ident = check_text("identifier", &f.identifier, 30)?;
        with_db(&app, move |_, db| {
            if db.subject(id)?.is_none() {
                return Ok(false);
            }
            db.update_subject(id, &name, &class, &ident)?;
            Ok(true)
        })
        .await
    }
    .await;
    match r {
        Ok(true) => Json(json!({ "id": id })).into_response(),
        Ok(false) => not_found("subject").into_response(),
        Err(e) => e.into_response(),
    }
}

/// A photo's bytes; its name as the user's file had it in `X-File-Name` (percent-encoded),
/// kept only to be shown.
async fn upload_photo(
    State(app): S,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let original = file_name(&headers);
    let r = with_db(&app, move |a, db| {
        if db.subject(id)?.is_none() {
            return Ok(None);
        }
        photos::add(db, &a.data, id, &original, &body).map(Some)
    })
    .await;
    match r {
        Ok(Some(added)) => Json(json!({ "id": added.id, "checks": added.checks })).into_response(),
        Ok(None) => not_found("subject").into_response(),
        Err(e) => e.into_response(),
    }
}

/// The name the user's file had (`X-File-Name`, percent-encoded), kept only to be shown.
fn file_name(headers: &HeaderMap) -> String {
    let name = headers
        .get("x-file-name")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "photo".into());
    name.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[derive(Deserialize)]
struct CaptionForm {
    caption: String,
}

async fn edit_caption(
    State(app): S,
    UrlPath(id): UrlPath<i64>,
    Json(f): Json<CaptionForm>,
) -> Response {
    if f.caption.chars().count() > 1000 || f.caption.chars().any(|c| c.is_control() && c != '\n') {
        return bad("caption: at most 1000 characters, no control characters").into_response();
    }
    let r = with_db(&app, move |a, db| {
        let Some(p) = db.photo(id)? else {
            return Ok(false);
        };
        photos::set_caption(&a.data, p.subject, &p.file, &f.caption)?;
        db.set_caption(id, f.caption.trim())?;
        Ok(true)
    })
    .await;
    match r {
        Ok(true) => Json(json!({ "id": id })).into_response(),
        Ok(false) => not_found("photo").into_response(),
        Err(e) => e.into_response(),
    }
}

/// A photo replaced by new bytes (checked as an upload is): the new one takes the old one's
/// caption, and the old one goes only once the new one is kept.
async fn replace_photo(
    State(app): S,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let original = file_name(&headers);
    let r = with_db(&app, move |a, db| {
        let Some(old) = db.photo(id)? else {
            return Ok(None);
        };
        let added = photos::add(db, &a.data, old.subject, &original, &body)?;
        if !old.caption.is_empty() {
            if let Some(new) = db.photo(added.id)? {
                photos::set_caption(&a.data, new.subject, &new.file, &old.caption)?;
                db.set_caption(added.id, &old.caption)?;
            }
        }
        photos::remove(&a.data, old.subject, &old.file);
        db.remove_photo(id)?;
        Ok(Some(added))
    })
    .await;
    match r {
        Ok(Some(added)) => {
            Json(json!({ "id": added.id, "replaced": id, "checks": added.checks })).into_response()
        }
        Ok(None) => not_found("photo").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_photo(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    let r = with_db(&app, move |a, db| {
        let Some(p) = db.photo(id)? else {
            return Ok(false);
        };
        photos::remove(&a.data, p.subject, &p.file);
        db.remove_photo(id)?;
        Ok(true)
    })
    .await;
    match r {
        Ok(true) => Json(json!({ "removed": id })).into_response(),
        Ok(false) => not_found("photo").into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ModelForm {
    path: String,
    name: Option<String>,
}

/// A model folder or single file, checked by the loader (its own messages), then listed.
async fn add_model(State(app): S, Json(f): Json<ModelForm>) -> Response {
    let r = with_db(&app, move |_, db| {
        let path = PathBuf::from(f.path.trim());
        if !path.is_absolute() {
            return Err(crate::Error::setting(
                "path",
                format!("{:?}: give the model's full path", f.path),
            ));
        }
        crate::sdxl::model_dir::ModelDir::open(&path)
            .map_err(|e| crate::Error::setting("path", e.to_string()))?;
        let name = f.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| {
            path.file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned())
        });
        db.add_model(name.trim(), &path)
    })
    .await;
    match r {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct JobForm {
    pub subject: i64,
    pub model: i64,
    pub preset: String,
    /// A bundled prompt set's name, or empty for `lines`.
    #[serde(default)]
    pub prompts: String,
    #[serde(default)]
    pub lines: String,
    /// The advanced panel's RUN.yaml, when edited.
    #[serde(default)]
    pub yaml: Option<String>,
    /// The adapters' rank (default 4; alpha follows it).
    #[serde(default)]
    pub rank: Option<u32>,
    /// MoSLoRA's mixer (default orthogonal).
    #[serde(default)]
    pub mixer: Option<String>,
    /// The adapters to train and compare (default lora and moslora; at least two).
    #[serde(default)]
    pub adapters: Option<Vec<String>>,
    /// Each adapter at LoRA's number of trainable parameters (`same_parameters`).
    #[serde(default)]
    pub same_parameters: Option<bool>,
}

impl JobForm {
    /// The adapter settings chosen, checked against what RUN.yaml takes.
    fn adapter(&self) -> Result<presets::AdapterChoice> {
        let mut c = presets::AdapterChoice::default();
        if let Some(r) = self.rank {
            if !(1..=128).contains(&r) {
                return Err(crate::Error::setting(
                    "rank",
                    format!("rank {r}: from 1 to 128"),
                ));
            }
            c.rank = r;
        }
        if let Some(m) = self.mixer.as_deref().filter(|m| !m.is_empty()) {
            let all = presets::mixers();
            if !all.contains(&m) {
                return Err(crate::Error::setting(
                    "mixer",
                    format!("mixer {m:?}: one of {}", all.join(", ")),
                ));
            }
            c.mixer = m.to_string();
        }
        if let Some(chosen) = &self.adapters {
            let mut kinds = Vec::new();
            for name in chosen {
                kinds.push(crate::train::AdapterKind::parse(name)?);
            }
            // In the trainer's order, each once.
            c.adapters = crate::train::AdapterKind::ALL
                .iter()
                .filter(|k| kinds.contains(k))
                .map(|k| k.name().to_string())
                .collect();
            if c.adapters.len() < 2 {
                return Err(crate::Error::setting(
                    "adapters",
                    format!(
                        "choose at least two adapters to compare ({} chosen): tick two or more of {}",
                        c.adapters.len(),
                        presets::adapters()
                            .iter()
                            .map(|k| k.1)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        c.same_parameters = self.same_parameters.unwrap_or(false);
        Ok(c)
    }
}

/// `yaml` with its top-level `output:` set to the job's own folder (the line replaced, or
/// added first), comments and all else as the user wrote them.
fn with_output(yaml: &str, out: &std::path::Path) -> String {
    let line = format!(
        "output: {}",
        serde_json::to_string(&out.to_string_lossy()).unwrap_or_default()
    );
    let mut found = false;
    let mut lines: Vec<String> = yaml
        .lines()
        .map(|l| {
            if !found && l.starts_with("output:") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.insert(0, line);
    }
    lines.join("\n") + "\n"
}

/// The RUN.yaml a form makes (the advanced panel's text, when given), checked as the command
/// line checks it, written into job folder `dir`.
fn job_yaml(
    a: &AppState,
    db: &Store,
    f: &JobForm,
    dir: &std::path::Path,
) -> Result<(String, crate::config::RunConfig)> {
    let s = db
        .subject(f.subject)?
        .ok_or_else(|| crate::Error::setting("subject", "no such subject"))?;
    let m = db
        .model(f.model)?
        .ok_or_else(|| crate::Error::setting("model", "no such model"))?;
    let have = db.photos(s.id)?.len();
    let least = crate::train::dataset::MIN_PHOTOS;
    if have < least {
        return Err(crate::Error::setting(
            "subject",
            format!(
                "{}: {} (at least {least}, best 5 to 20): add them on the subject's page",
                s.name,
                crate::words::count(have, "photo")
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let prompts = if f.lines.trim().is_empty() {
        let name = if f.prompts.is_empty() {
            "toy"
        } else {
            f.prompts.as_str()
        };
        if !["toy", "study8", "dreambooth"].contains(&name) {
            return Err(crate::Error::setting(
                "prompts",
                format!("{name:?}: toy, study8 or dreambooth"),
            ));
        }
        name.to_string()
    } else {
        let list: String = f
            .lines
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(200)
            .map(|l| format!("  - {}\n", serde_json::to_string(l).unwrap_or_default()))
            .collect();
        let p = dir.join("prompts.yaml");
        crate::fsutil::write_bytes(&p, format!("prompts:\n{list}").as_bytes())?;
        p.display().to_string()
    };
    let images = photos::photos_dir(&a.data, s.id);
    let run = presets::RunSubject {
        name: &s.name,
        class: &s.class,
        identifier: &s.identifier,
        images: &images,
    };
    let out = dir.join("out");
    let text = match &f.yaml {
        Some(y) if !y.trim().is_empty() => with_output(y, &out),
        _ => presets::run_yaml(
            &f.preset,
            &run,
            std::path::Path::new(&m.path),
            &out,
            &prompts,
            &f.adapter()?,
        )
        .ok_or_else(|| {
            crate::Error::setting("preset", format!("{:?}: no such preset", f.preset))
        })?,
    };
    // A RUN.yaml made by a preview names the preview's own prompt file: the job gets a copy.
    let preview = a.data.join("jobs").join("preview").join("prompts.yaml");
    let mine = dir.join("prompts.yaml");
    let preview_name = preview.display().to_string();
    let text = if mine != preview && text.contains(&preview_name) {
        if !mine.is_file() {
            let bytes = std::fs::read(&preview).map_err(|e| crate::Error::io(&preview, e))?;
            crate::fsutil::write_bytes(&mine, &bytes)?;
        }
        text.replace(&preview_name, &mine.display().to_string())
    } else {
        text
    };
    let path = dir.join("run.yaml");
    crate::fsutil::write_bytes(&path, text.as_bytes())?;
    let cfg = crate::config::RunConfig::load(&path)?;
    if cfg.adapters.len() < 2 {
        return Err(crate::Error::setting(
            "adapters",
            format!(
                "a comparison needs at least two adapters; the RUN.yaml names {}",
                cfg.adapters.len()
            ),
        ));
    }
    if cfg.output != out {
        return Err(crate::Error::setting(
            "output",
            format!(
                "output: the app writes each job into its own folder; keep `output: {}`",
                out.display()
            ),
        ));
    }
    Ok((text, cfg))
}

#[derive(Deserialize)]
struct YamlForm {
    yaml: String,
}

/// The advanced panel's RUN.yaml as it is typed: read and checked as `compare` reads and
/// checks a RUN.yaml (the same messages, "did you mean" included); nothing is written.
async fn check_yaml(Json(f): Json<YamlForm>) -> Response {
    if f.yaml.len() > 256 << 10 {
        return bad("RUN.yaml: at most 256 KiB").into_response();
    }
    let r = crate::config::RunConfig::parse(&f.yaml).and_then(|c| c.validate().map(|_| c));
    match r {
        Ok(c) => {
            Json(json!({ "ok": true, "device": c.device, "steps": c.train.steps })).into_response()
        }
        Err(e) => Json(json!({ "ok": false, "error": format!("RUN.yaml: {e}") })).into_response(),
    }
}

async fn preview(State(app): S, Json(f): Json<JobForm>) -> Response {
    let r = with_db(&app, move |a, db| {
        let dir = a.data.join("jobs").join("preview");
        let r = job_yaml(a, db, &f, &dir);
        let (yaml, _) = r?;
        Ok(yaml)
    })
    .await;
    match r {
        Ok(yaml) => Json(json!({ "yaml": yaml })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_job(State(app): S, Json(f): Json<JobForm>) -> Response {
    let r = with_db(&app, move |a, db| {
        // Checked in a scratch folder first, so that a refused form leaves no job.
        let scratch = a.data.join("jobs").join("preview");
        let (_, cfg) = job_yaml(a, db, &f, &scratch)?;
        let s = db.subject(f.subject)?.map(|s| s.name).unwrap_or_default();
        let title = format!("{s}: {}", presets::label(&f.preset).unwrap_or("custom"));
        let id = db.add_job(&title, f.subject, f.model, &f.preset, &cfg.device)?;
        let dir = JobFiles::new(&a.data, id).dir;
        let _ = std::fs::remove_dir_all(&dir);
        let made = job_yaml(a, db, &f, &dir);
        if let Err(e) = made {
            db.remove_job(id)?;
            return Err(e);
        }
        Ok(id)
    })
    .await;
    match r {
        Ok(id) => Json(json!({ "id": id, "url": format!("/jobs/{id}") })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn study_page(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    page(with_db(&app, move |a, db| pages::study(a, db, id)).await)
}

/// Makes the job's study (once) and serves it; its links are on `/jobs/ID/study`.
async fn make_study(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    let r = with_db(&app, move |a, db| {
        if db.job(id)?.is_none_or(|j| j.state != super::store::DONE) {
            return Err(crate::Error::setting(
                "job",
                "a study is made from a finished job",
            ));
        }
        super::study::make_and_serve(&a.data, &a.exe, id, a.ip)
    })
    .await;
    match r {
        Ok(()) => Json(json!({ "url": format!("/jobs/{id}/study") })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A job as the database has it (the queue pages' data, for scripts).
async fn job_json(State(app): S, UrlPath(id): UrlPath<i64>) -> Response {
    match with_db(&app, move |_, db| db.job(id)).await {
        Ok(Some(j)) => Json(j).into_response(),
        Ok(None) => not_found("job").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn job_action(State(app): S, UrlPath((id, action)): UrlPath<(i64, String)>) -> Response {
    let r = with_db(&app, move |a, db| {
        if db.job(id)?.is_none() {
            return Ok(None);
        }
        let changed = match action.as_str() {
            "stop" => jobs::stop(db, &a.data, id)?,
            "resume" => jobs::resume(db, id)?,
            "sample" => jobs::sample_now(db, &a.data, id)?,
            "up" => {
                db.move_job(id, -1)?;
                true
            }
            "down" => {
                db.move_job(id, 1)?;
                true
            }
            "remove" => {
                let j = db.job(id)?.expect("checked above");
                if j.state == super::store::RUNNING || j.state == super::store::STOPPING {
                    return Err(crate::Error::setting(
                        "job",
                        "stop the job before removing it",
                    ));
                }
                db.remove_job(id)?;
                let _ = std::fs::remove_dir_all(JobFiles::new(&a.data, id).dir);
                // Its exports too. (Its study, and the answers in it, stay: see
                // Store::never_reuse_job_numbers.)
                let prefix = format!("job{id}-");
                for e in std::fs::read_dir(a.data.join("exports"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                true
            }
            _ => {
                return Err(crate::Error::setting(
                    "action",
                    "stop, resume, sample, up, down or remove",
                ))
            }
        };
        Ok(Some((changed, db.job(id)?.map(|j| j.state))))
    })
    .await;
    match r {
        Ok(Some((changed, state))) => {
            Json(json!({ "id": id, "changed": changed, "state": state })).into_response()
        }
        Ok(None) => not_found("job").into_response(),
        Err(e) => e.into_response(),
    }
}
