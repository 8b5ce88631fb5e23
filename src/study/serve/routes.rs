//! The HTTP routes of a served study.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /`, `/index.html` | anyone | the study's rater page, with `serve.js` added |
//! | `GET /serve.js` | anyone | the page's link to this server |
//! | `GET /organiser` | anyone | the organiser's page (it holds no data) |
//! | `GET /api/rater` | a rater's token | that rater's state: order, position, answers |
//! | `POST /api/rater/answer` | a rater's token | one answer, acknowledged once committed |
//! | `POST /api/rater/session` | a rater's token | name, trial order, position, comment |
//! | `GET /api/organiser` | the organiser's token | progress per rater and the current tally |
//! | `GET` anything else | anyone | a picture of the study folder ([`super::files`]) |
//!
//! Tokens come only in `Authorization: Bearer` headers, so a cross-site form cannot vote,
//! and no CORS header is ever sent, so other sites' scripts cannot read answers. Nothing here
//! logs a request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::db::{Session, StoredAnswer, VoteDb};
use super::files::SafeFiles;
use super::tokens::{bearer, TokenTable};
use super::writer::{Change, Writer};
use crate::serve::http::{bad, declared_length, harden, internal, ApiError};
use crate::study::tally;
use crate::study::{report, Choice, Key};

/// The page's script for served mode, and the organiser's page.
const SERVE_JS: &str = include_str!("serve.js");
const ORGANISER_HTML: &str = include_str!("organiser.html");

/// Longest rater name and comment, in characters.
pub const MAX_NAME: usize = 200;
pub const MAX_COMMENT: usize = 4000;
/// Longest time on one trial a page may report (a week, in ms): more is a broken clock.
const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// What every request shares.
pub struct App {
    pub key: Key,
    pub trials: HashSet<String>,
    /// Every change goes through the writer (group commit); reads use their own connection.
    pub writer: Writer,
    pub reader: Mutex<VoteDb>,
    pub raters: TokenTable,
    /// Each rater's name (as the organiser gave it), by database id.
    pub rater_names: HashMap<i64, String>,
    pub organiser: TokenTable,
    pub files: SafeFiles,
    /// The rater page with `serve.js` added.
    pub page: String,
}

/// The biggest request body: a session carries the trial order, so it grows with the study.
pub fn body_limit(trials: usize) -> usize {
    16 * 1024 + 128 * trials
}

pub fn router(app: Arc<App>) -> Router {
    let limit = body_limit(app.key.trials.len());
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/serve.js", get(serve_js))
        .route("/organiser", get(organiser_page))
        .route("/api/rater", get(rater_state))
        .route("/api/rater/answer", post(put_answer))
        .route("/api/rater/session", post(put_session))
        .route("/api/organiser", get(organiser))
        .fallback(study_file)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, declared_length))
        .layer(axum::middleware::map_response(harden))
        .with_state(app)
}

/// The rater (database id) the request's token admits. A request is one rater's: one with
/// several Authorization headers (two raters' tokens, say) is refused, whichever comes first.
fn rater_of(app: &App, headers: &HeaderMap) -> Result<i64, ApiError> {
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a request carries one Authorization header, with one rater's token".into(),
        ));
    }
    let presented = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    presented.and_then(|t| app.raters.find(t)).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "no valid rater token: open the personal link you were sent".into(),
        )
    })
}

/// Read the database off the async workers.
async fn with_db<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&VoteDb) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let db = app.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&db)
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page(State(app): State<Arc<App>>) -> Response {
    html(app.page.clone())
}

async fn serve_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SERVE_JS,
    )
        .into_response()
}

async fn organiser_page() -> Response {
    html(ORGANISER_HTML.to_string())
}

async fn study_file(State(app): State<Arc<App>>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
            .into_response();
    }
    let not_found = || ApiError(StatusCode::NOT_FOUND, "not found".into()).into_response();
    let Some((path, kind)) = app.files.resolve(uri.path()) else {
        return not_found();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

async fn rater_state(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let rater = match rater_of(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let study_id = app.key.study_id.clone();
    match with_db(&app, move |db| db.rater_state(rater)).await {
        Ok(s) => Json(json!({ "study_id": study_id, "state": s })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One answer as the page sends it.
#[derive(Debug)]
struct AnswerIn {
    trial: String,
    similarity: Option<Choice>,
    prompt: Option<Choice>,
    ms: u64,
}

/// At most 80 characters of what a request said, for an error message.
fn shown(v: &serde_json::Value) -> String {
    v.to_string().chars().take(80).collect()
}

/// A JSON object with only the given fields.
fn object<'a>(
    what: &str,
    body: &'a serde_json::Value,
    fields: &[&str],
) -> Result<&'a serde_json::Map<String, serde_json::Value>, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        bad(format!(
            "{what}: expected a JSON object, got {}",
            shown(body)
        ))
    })?;
    if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        // Who answers is the token's rater, never something the body says.
        let why = if ["rater", "token", "rater_id"].contains(&k.as_str()) {
            "; the rater is the one whose token sends the request, a body cannot name one"
        } else {
            ""
        };
        return Err(bad(format!(
            "{what}: unknown field {:?} (expected {}){why}",
            k.chars().take(40).collect::<String>(),
            fields.join(", ")
        )));
    }
    Ok(obj)
}

fn json_body(what: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("{what}: not valid JSON ({e})")))
}

fn parse_answer(body: &[u8]) -> Result<AnswerIn, ApiError> {
    let v = json_body("answer", body)?;
    let obj = object("answer", &v, &["trial", "similarity", "prompt", "ms"])?;
    let trial = obj
        .get("trial")
        .and_then(|t| t.as_str())
        .ok_or_else(|| bad("answer: missing field `trial` (a trial id of this study)"))?;
    let choice = |field: &str| match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(c)) if c == "left" => Ok(Some(Choice::Left)),
        Some(serde_json::Value::String(c)) if c == "tie" => Ok(Some(Choice::Tie)),
        Some(serde_json::Value::String(c)) if c == "right" => Ok(Some(Choice::Right)),
        Some(other) => Err(bad(format!(
            "answer: {field} must be \"left\", \"tie\", \"right\" or null, not {}",
            shown(other)
        ))),
    };
    let ms = match obj.get("ms") {
        None | Some(serde_json::Value::Null) => 0,
        Some(m) => m.as_u64().ok_or_else(|| {
            bad(format!(
                "answer: ms must be a whole number of milliseconds, not {}",
                shown(m)
            ))
        })?,
    };
    Ok(AnswerIn {
        trial: trial.to_string(),
        similarity: choice("similarity")?,
        prompt: choice("prompt")?,
        ms,
    })
}

async fn put_answer(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let rater = match rater_of(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let a = match parse_answer(&body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !app.trials.contains(&a.trial) {
        return bad(format!(
            "answer: trial {:?} is not in this study",
            a.trial.chars().take(80).collect::<String>()
        ))
        .into_response();
    }
    if a.ms > MAX_MS {
        return bad(format!(
            "answer: ms {} is more than a week on one pair",
            a.ms
        ))
        .into_response();
    }
    let stored = StoredAnswer {
        similarity: a.similarity,
        prompt: a.prompt,
        ms: a.ms,
    };
    let change = Change::Answer {
        rater,
        trial: a.trial,
        answer: stored,
    };
    acknowledge(app.writer.write(change).await)
}

/// The parts of a session the page sends.
#[derive(Debug, Deserialize)]
struct SessionIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    order: Option<Vec<String>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    started: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

fn parse_session(body: &[u8]) -> Result<SessionIn, ApiError> {
    let v = json_body("session", body)?;
    object(
        "session",
        &v,
        &["name", "order", "pos", "started", "comment"],
    )?;
    serde_json::from_value(v).map_err(|e| bad(format!("session: {e}")))
}

fn check_session(app: &App, s: SessionIn) -> Result<Session, ApiError> {
    let n = app.key.trials.len();
    let text = |field: &str, v: Option<String>, max: usize| -> Result<Option<String>, ApiError> {
        match v {
            Some(v) if v.chars().count() > max => Err(bad(format!(
                "session: {field} is longer than {max} characters"
            ))),
            Some(v) if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                Err(bad(format!("session: {field} holds control characters")))
            }
            v => Ok(v),
        }
    };
    if let Some(order) = &s.order {
        let distinct: HashSet<&String> = order.iter().collect();
        if order.len() != n || distinct.len() != n || !order.iter().all(|t| app.trials.contains(t))
        {
            return Err(bad(format!(
                "session: order must list each of the study's {n} trials once"
            )));
        }
    }
    if let Some(p) = s.pos {
        if p > n as u64 {
            return Err(bad(format!(
                "session: pos {p} is past the last trial ({n})"
            )));
        }
    }
    Ok(Session {
        name: text("name", s.name, MAX_NAME)?,
        order: s.order,
        pos: s.pos,
        started: text("started", s.started, 64)?,
        comment: text("comment", s.comment, MAX_COMMENT)?,
    })
}

async fn put_session(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let rater = match rater_of(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut session = match parse_session(&body).and_then(|s| check_session(&app, s)) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // A name that is another rater's would show this rater's answers under that name on the
    // organiser's page: it is not kept (the rest of the session is), and the reply says so.
    let mut note = None;
    if let Some(name) = &session.name {
        let other = app
            .rater_names
            .iter()
            .find(|(id, n)| **id != rater && n.eq_ignore_ascii_case(name.trim()));
        if let Some((_, other)) = other {
            let own = app.rater_names.get(&rater).map_or("", String::as_str);
            note = Some(format!(
                "the name {other:?} is another rater's and was not kept: this link is {own}'s"
            ));
            session.name = None;
        }
    }
    match app.writer.write(Change::Session { rater, session }).await {
        Ok(()) => match note {
            Some(note) => Json(json!({ "ok": true, "note": note })).into_response(),
            None => Json(json!({ "ok": true })).into_response(),
        },
        Err(e) => internal(e).into_response(),
    }
}

/// `{"ok": true}` once committed.
fn acknowledge(committed: Result<(), String>) -> Response {
    match committed {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => internal(e).into_response(),
    }
}

async fn organiser(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let presented = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if presented.and_then(|t| app.organiser.find(t)).is_none() {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "no valid organiser token: open the organiser link".into(),
        )
        .into_response();
    }
    let key = app.key.clone();
    let result = with_db(&app, move |db| {
        let progress = db.progress()?;
        let (raters, notes) = tally::gather(&key, db.sources(&key)?);
        let tallied = (!raters.is_empty()).then(|| tally::compute(&key, &raters, notes));
        Ok((progress, tallied))
    })
    .await;
    match result {
        Ok((progress, tallied)) => {
            let text = tallied.as_ref().map(report::text);
            let html = tallied.as_ref().map(report::html);
            Json(json!({
                "study_id": app.key.study_id,
                "trials": app.key.trials.len(),
                "raters": progress,
                "tally_text": text,
                "tally_html": html,
                "tally": tallied,
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}
