//! `moslora study serve`: the study folder served live. Each test starts the server binary
//! itself on a free port (`--bind 127.0.0.1:0`), talks plain HTTP/1.1 to it over loopback and
//! stops it by PID: security (nothing outside the folder, tokens, validation, limits, CORS,
//! loopback), reliability (SIGKILL at random moments, 50 raters at once, one server per
//! study), the tally from the database against the tally from votes files, and two raters in
//! headless Chromium (`tests/browser/study_serve.py`).

mod common;
mod serve_support;
mod study_support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use moslora::study::{Choice, Key, Which};
use serde_json::{json, Value};
use serve_support::*;
use study_support::*;

fn choice_name(c: Choice) -> &'static str {
    match c {
        Choice::Left => "left",
        Choice::Tie => "tie",
        Choice::Right => "right",
    }
}

/// A small generator, so answers are fixed by the seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn choice(&mut self) -> Choice {
        [Choice::Left, Choice::Tie, Choice::Right][(self.next() % 3) as usize]
    }
}

#[test]
fn nothing_outside_the_study_folder_is_served() {
    let root = scratch("files");
    let (study, key, key_path) = small_study(&root);
    // Bait: the key copied into the folder, symlinks out of it and within it.
    std::fs::copy(&key_path, study.join("copy.key.json")).unwrap();
    std::fs::write(root.join("outside.png"), b"outside").unwrap();
    std::os::unix::fs::symlink(&key_path, study.join("key.png")).unwrap();
    std::os::unix::fs::symlink(root.join("outside.png"), study.join("out.png")).unwrap();
    std::os::unix::fs::symlink(&*root, study.join("up")).unwrap();
    let t = &key.trials[0];
    std::os::unix::fs::symlink(study.join(&t.left_file), study.join("inside.png")).unwrap();
    let server = Server::start(&study, &key_path, &["--raters", "2"]);
    let mut http = server.client();

    let page = http.get("/", None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script src=\"serve.js\"></script>"));
    assert!(page.text().contains(&key.study_id));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let img = http.get(&format!("/{}", t.left_file), None);
    assert_eq!(img.status, 200);
    assert_eq!(img.header("content-type"), Some("image/png"));
    assert_eq!(img.body, std::fs::read(study.join(&t.left_file)).unwrap());
    // The rater page's script says nothing of the methods either (as tests/study.rs checks
    // for the page itself).
    let script = http.get("/serve.js", None);
    assert_eq!(script.status, 200);
    let words = [
        "lora".to_string(),
        "mos".into(),
        "base".into(),
        key.a.label.to_lowercase(),
        key.b.label.to_lowercase(),
    ];
    for w in &words {
        assert!(
            !script.text().to_lowercase().contains(w.as_str()),
            "serve.js says {w:?}"
        );
        assert!(
            !page.text().to_lowercase().contains(w.as_str()),
            "the served page says {w:?}"
        );
    }

    let secret = [
        "moslora-study-key",
        "SQLite format",
        "Secret links",
        "outside",
    ];
    let attempts = [
        "/STUDY.key.json",
        "/../STUDY.key.json",
        "/images/../../STUDY.key.json",
        "/%2e%2e/STUDY.key.json",
        "/%2E%2E/STUDY.votes.sqlite",
        "/images/..%2f..%2fSTUDY.key.json",
        "/images%2f%2e%2e%2f%2e%2e%2fSTUDY.links.txt",
        "/%252e%252e/STUDY.key.json",
        "/..%5cSTUDY.key.json",
        "/./index.html/../../STUDY.key.json",
        "//etc/passwd",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        &format!("/{}", key_path.display()),
        "/copy.key.json",
        "/key.png",
        "/out.png",
        "/up/outside.png",
        "/up/STUDY.key.json",
        "/inside.png",
        "/images/",
        "/index.html%00.png",
    ];
    for path in attempts {
        let r = http.get(path, None);
        assert!(
            r.status == 404 || r.status == 400,
            "GET {path}: {} {}",
            r.status,
            r.text()
        );
        for s in secret {
            assert!(!r.text().contains(s), "GET {path} leaked {s:?}");
        }
    }
    // Absolute-form and odd request targets, sent as raw bytes.
    for target in [
        format!("http://{}/../STUDY.key.json", server.addr),
        format!("http://{}/%2e%2e/STUDY.key.json", server.addr),
        "/images/../../STUDY.key.json?x=1".to_string(),
        "*".to_string(),
    ] {
        let mut c = server.client();
        // An error is the server hanging up: nothing served.
        if let Ok(r) = c.raw(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        ) {
            assert!(
                r.status == 404 || r.status == 400,
                "GET {target}: {}",
                r.status
            );
            for s in secret {
                assert!(!r.text().contains(s), "GET {target} leaked {s:?}");
            }
        }
    }
    // Writes to files are not a thing.
    let r = http.send("PUT", "/index.html", None, Some(b"x")).unwrap();
    assert_eq!(r.status, 405);
    println!("{} traversal attempts refused", attempts.len() + 4);
}

#[test]
fn votes_need_a_valid_token_and_are_validated() {
    let root = scratch("votes");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(&study, &key_path, &["--rater", "ann", "--rater", "bo"]);
    let tok = tokens(&key_path);
    let (ann, bo, org) = (&tok["ann"], &tok["bo"], &tok["organiser"]);
    assert_eq!(ann.len(), 64, "a 256-bit token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("STUDY.links.txt"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "links file not owner-only: {mode:o}");
    let mut http = server.client();
    let t0 = &key.trials[0].id;
    let vote = json!({"trial": t0, "similarity": "left", "prompt": "tie", "ms": 1234});

    // Without a valid token, nothing.
    let mut flipped = ann.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    for bad in [
        None,
        Some(""),
        Some("nope"),
        Some(&flipped[..]),
        Some(&ann[..63]),
        Some(org),
    ] {
        let r = http.post("/api/rater/answer", bad, &vote);
        assert_eq!(r.status, 401, "token {bad:?}: {}", r.text());
        assert_eq!(http.get("/api/rater", bad).status, 401);
    }
    let r = http
        .send(
            "POST",
            "/api/rater/answer",
            None,
            Some(vote.to_string().as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let r = http.send("GET", "/api/organiser", Some(ann), None).unwrap();
    assert_eq!(r.status, 401, "a rater's token opens the organiser page");
    // Basic auth or a token in the query string does not count either.
    let r = http
        .raw(format!("GET /api/rater?token={ann} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(r.status, 401);

    // Validation: trial ids must exist, choices come from the allowed set, nothing else.
    let cases = [
        (
            json!({"trial": "no-such-trial", "similarity": "left"}),
            "not in this study",
        ),
        (
            json!({"trial": t0, "similarity": "maybe"}),
            "similarity must be",
        ),
        (json!({"trial": t0, "prompt": "LEFT"}), "prompt must be"),
        (json!({"trial": t0, "similarity": 1}), "similarity must be"),
        (json!({"trial": t0, "ms": -5}), "ms must be"),
        (json!({"trial": t0, "ms": 1.5}), "ms must be"),
        (json!({"trial": t0, "ms": 1u64 << 40}), "more than a week"),
        (json!({"trial": t0, "rater": "bo"}), "unknown field"),
        (json!({"similarity": "left"}), "missing field"),
        (json!([1, 2]), "expected a JSON object"),
    ];
    for (body, says) in cases {
        let r = http.post("/api/rater/answer", Some(ann), &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(says), "{body}: error {e:?} should say {says:?}");
    }
    let r = http
        .send(
            "POST",
            "/api/rater/answer",
            Some(ann),
            Some(b"{\"trial\": "),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    let order_bad = [
        json!({"order": ["x"]}),
        json!({"order": vec![t0.clone(); key.trials.len()]}),
        json!({"pos": key.trials.len() + 1}),
        json!({"name": "a".repeat(201)}),
        json!({"comment": "c".repeat(4001)}),
        json!({"name": "bell\u{7}"}),
    ];
    for body in order_bad {
        let r = http.post("/api/rater/session", Some(ann), &body);
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            body.to_string().chars().take(80).collect::<String>(),
            r.text()
        );
    }
    // Size limit: a megabyte of JSON is refused on its declared length, before the server
    // asks for the body.
    let big = format!("{{\"trial\": \"{}\"}}", "x".repeat(1 << 20));
    let (r, body_sent) = http
        .post_expecting_continue("/api/rater/answer", ann, big.as_bytes())
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        !body_sent,
        "the server asked for a body it refuses on its length"
    );
    assert!(r.text().contains("accepts at most"), "{}", r.text());
    // Sent whole without asking, the body is refused just the same: with a 413 if the client
    // reads it before the server drops the connection it stopped reading, else with the
    // connection reset. Never accepted.
    let mut blast = server.client();
    match blast.send("POST", "/api/rater/answer", Some(ann), Some(big.as_bytes())) {
        Ok(r) => assert_eq!(r.status, 413, "{}", r.text()),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e:?}"
        ),
    }
    // A body of undeclared length (chunked) is cut off at the limit as it arrives.
    let mut chunked = server.client();
    let mut req = format!(
        "POST /api/rater/answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ann}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let limit = moslora::study::serve::routes::body_limit(key.trials.len());
    let piece = "y".repeat(4096);
    for _ in 0..=limit / piece.len() {
        req.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    match chunked.raw(&req) {
        Ok(r) => assert_eq!(r.status, 413, "{}", r.text()),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e:?}"
        ),
    }

    // Nothing of the refused requests was stored.
    let s = http.get("/api/rater", Some(ann)).json();
    assert_eq!(s["state"]["answers"], json!({}));
    assert_eq!(s["state"]["rater"], "ann");

    // A valid vote is stored, and only its rater sees it.
    let r = http.post("/api/rater/answer", Some(ann), &vote);
    assert_eq!(r.status, 200, "{}", r.text());
    let a = http.get("/api/rater", Some(ann)).json();
    assert_eq!(
        a["state"]["answers"][t0],
        json!({"similarity": "left", "prompt": "tie", "ms": 1234})
    );
    let b = http.get("/api/rater", Some(bo)).json();
    assert_eq!(b["state"]["answers"], json!({}), "bo sees ann's answers");
    // A changed answer replaces the old one.
    let changed = json!({"trial": t0, "similarity": "right", "prompt": "tie", "ms": 2000});
    assert_eq!(
        http.post("/api/rater/answer", Some(ann), &changed).status,
        200
    );
    let a = http.get("/api/rater", Some(ann)).json();
    assert_eq!(a["state"]["answers"][t0]["similarity"], "right");
    assert_eq!(a["state"]["answers"].as_object().unwrap().len(), 1);

    // Names and comments are kept as given (the pages show them as text).
    let html_name = "<img src=x onerror=alert(1)>Ann & \"co\"";
    let html_comment = "</pre><script>alert('x')</script>";
    let r = http.post(
        "/api/rater/session",
        Some(ann),
        &json!({"name": html_name, "comment": html_comment}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let o = http.get("/api/organiser", Some(org));
    assert_eq!(o.status, 200);
    assert!(o
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let o = o.json();
    assert_eq!(o["raters"][0]["name"], html_name);
    assert_eq!(o["raters"][0]["comment"], html_comment);
    assert_eq!(o["raters"][0]["answered"], 1);
    assert!(o["tally_text"].as_str().unwrap().contains("1 rater,"));

    // CORS is off: no Access-Control header, whatever the origin asks.
    let pre = http
        .raw(
            "OPTIONS /api/rater/answer HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
                .as_bytes(),
        )
        .unwrap();
    let got = http
        .raw(
            format!(
                "GET /api/rater HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nAuthorization: Bearer {ann}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(got.status, 200);
    for r in [&pre, &got] {
        assert!(
            !r.headers
                .iter()
                .any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control")),
            "CORS header sent: {:?}",
            r.headers
        );
    }

    // Tokens are never logged: a restarted server prints no token at all, whatever it served.
    drop(http);
    let first = server.output();
    assert!(
        first.contains("new link: ann"),
        "links printed once at creation:\n{first}"
    );
    server.stop();
    let server = Server::start(&study, &key_path, &[]);
    let mut http = server.client();
    for t in [ann, bo, org, &flipped] {
        let _ = http.get("/api/rater", Some(t));
        let _ = http.get("/api/organiser", Some(t));
        let _ = http.post("/api/rater/answer", Some(t), &vote);
    }
    let _ = http.get(&format!("/api/rater?t={ann}"), None);
    let _ = http.get(&format!("/{ann}.png"), None);
    drop(http);
    let printed = server.output.clone();
    assert!(server.stop().success());
    std::thread::sleep(Duration::from_millis(100));
    let out = printed.lock().unwrap().clone();
    for (name, t) in [
        ("ann", ann),
        ("bo", bo),
        ("organiser", org),
        ("flipped", &flipped),
    ] {
        assert!(
            !out.contains(&t[..16]),
            "the {name} token was printed:\n{out}"
        );
    }
    assert!(out.contains("links in"), "{out}");
}

/// Whatever the body, the query or the headers say, an answer or a session is stored under the
/// rater whose token sent it, and only there.
#[test]
fn a_token_writes_only_under_its_own_rater() {
    let root = scratch("own-rater");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(&study, &key_path, &["--raters", "3"]);
    let tok = tokens(&key_path);
    let (t2, t3, org) = (&tok["rater-02"], &tok["rater-03"], &tok["organiser"]);
    let mut http = server.client();
    let (a, b, c) = (&key.trials[0].id, &key.trials[1].id, &key.trials[2].id);
    let state = |http: &mut Http, t: &str| http.get("/api/rater", Some(t)).json()["state"].clone();

    // Rater two's own answer, and a display name.
    let mine = json!({"trial": a, "similarity": "left", "prompt": "tie", "ms": 500});
    assert_eq!(http.post("/api/rater/answer", Some(t2), &mine).status, 200);
    let r = http.post("/api/rater/session", Some(t2), &json!({"name": "Two"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true}));

    // A body naming another rater (by name, id or token) is refused whole.
    for (what, body) in [
        (
            "answer",
            json!({"trial": b, "similarity": "right", "rater": "rater-03"}),
        ),
        (
            "answer",
            json!({"trial": b, "similarity": "right", "rater_id": 3}),
        ),
        (
            "answer",
            json!({"trial": b, "similarity": "right", "token": t3}),
        ),
        ("session", json!({"pos": 1, "rater": "rater-03"})),
    ] {
        let r = http.post(&format!("/api/rater/{what}"), Some(t2), &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            e.contains("unknown field") && e.contains("cannot name"),
            "{body}: {e}"
        );
    }
    // A query naming another rater changes nothing: the token decides.
    let r = http.post(
        "/api/rater/answer?rater=rater-03",
        Some(t2),
        &json!({"trial": b, "similarity": "tie", "prompt": "right", "ms": 700}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Two Authorization headers (two raters' tokens) are refused, in either order.
    for (first, second) in [(t2, t3), (t3, t2)] {
        let body = json!({"trial": c, "similarity": "left"}).to_string();
        let r = http
            .raw(
                format!(
                    "POST /api/rater/answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n\
                     Authorization: Bearer {second}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            r.text().contains("one Authorization header"),
            "{}",
            r.text()
        );
    }
    // A display name that is another rater's is not kept (the rest of the session is), and
    // the reply says so; rater three is untouched.
    for name in ["rater-03", " RATER-03 "] {
        let r = http.post(
            "/api/rater/session",
            Some(t2),
            &json!({"name": name, "pos": 2}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let note = r.json()["note"].as_str().unwrap_or_default().to_string();
        assert!(
            note.contains("\"rater-03\" is another rater's") && note.contains("rater-02's"),
            "{note}"
        );
    }

    let two = state(&mut http, t2);
    assert_eq!(two["rater"], "rater-02");
    assert_eq!(two["name"], "Two", "rater two's name was replaced");
    assert_eq!(two["pos"], 2, "the rest of the session is kept");
    assert_eq!(
        two["answers"],
        json!({
            a.as_str(): {"similarity": "left", "prompt": "tie", "ms": 500},
            b.as_str(): {"similarity": "tie", "prompt": "right", "ms": 700},
        })
    );
    let three = state(&mut http, t3);
    assert_eq!(three["rater"], "rater-03");
    assert_eq!(three["answers"], json!({}), "rater three got answers");
    assert_eq!(three["name"], Value::Null);
    assert_eq!(three["pos"], 0);
    let progress = http.get("/api/organiser", Some(org)).json()["raters"].clone();
    let answered: Vec<(String, u64)> = progress
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rater"].as_str().unwrap().into(),
                r["answered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("rater-01".into(), 0),
            ("rater-02".into(), 2),
            ("rater-03".into(), 0)
        ]
    );
}

/// Friends sharing one laptop: two raters' links in one tab (`tests/browser/study_switch.py`).
/// The page follows the link in the address bar, and the server holds each rater's answers
/// under that rater exactly.
#[test]
fn two_links_in_one_tab_switch_the_rater_in_chromium() {
    require_browser();
    let root = scratch("switch");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(&study, &key_path, &["--raters", "3"]);
    let tok = tokens(&key_path);
    let answers_path = root.join("answers.json");
    let t0 = Instant::now();
    let out = std::process::Command::new(common::python())
        .arg(common::repo().join("tests/browser/study_switch.py"))
        .args(["--base", &format!("http://{}", server.addr)])
        .args(["--rater", &format!("rater-02={}", tok["rater-02"])])
        .args(["--rater", &format!("rater-03={}", tok["rater-03"])])
        .args(["--answers", answers_path.to_str().unwrap()])
        .args(["--seed", "3"])
        .args(["--screenshot", root.join("switch.png").to_str().unwrap()])
        .output()
        .expect("running python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}\nbrowser script: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "the scripted raters failed:\n{so}\n{se}\nserver:\n{}",
        server.output()
    );
    let script: Value = serde_json::from_slice(&std::fs::read(&answers_path).unwrap()).unwrap();
    assert_eq!(script["browser_storage_items"], json!([0, 0]));

    // The server holds exactly what each rater gave, under that rater (the time on a pair
    // left unanswered is kept too, as time only).
    let mut http = server.client();
    for (rater, pairs) in [("rater-02", 3), ("rater-03", 2)] {
        let given = script["raters"][rater]["answers"].as_object().unwrap();
        assert_eq!(given.len(), pairs);
        let s = http.get("/api/rater", Some(&tok[rater])).json()["state"].clone();
        assert_eq!(s["rater"], rater);
        let answered: BTreeMap<&String, Value> = s["answers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, a)| !a["similarity"].is_null() || !a["prompt"].is_null())
            .map(|(t, a)| {
                (
                    t,
                    json!({"similarity": a["similarity"], "prompt": a["prompt"]}),
                )
            })
            .collect();
        let given: BTreeMap<&String, Value> = given.iter().map(|(t, a)| (t, a.clone())).collect();
        assert_eq!(answered, given, "{rater}: the server holds other answers");
    }
    let names: Vec<Value> = http.get("/api/organiser", Some(&tok["organiser"])).json()["raters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["rater"], r["name"], r["answered"]]))
        .collect();
    assert_eq!(
        names,
        [
            json!(["rater-01", null, 0]),
            json!(["rater-02", "rater-02", 2]),
            json!(["rater-03", script["typed_name"], 2]),
        ]
    );
    assert_eq!(key.trials.len(), 13);
}

#[test]
fn loopback_unless_public_and_one_server_per_study() {
    let root = scratch("bind");
    let (study, _key, key_path) = small_study(&root);
    let out = moslora(&[
        "study",
        "serve",
        study.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
        "--bind",
        "0.0.0.0:0",
        "--raters",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--public") && err.contains("0.0.0.0"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let out = moslora(&[
        "study",
        "serve",
        study.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "no raters: {err}");
    assert!(err.contains("--raters"), "{err}");

    let first = Server::start(&study, &key_path, &["--raters", "2"]);
    let second = Server::try_start(&study, &key_path, &[]);
    let said = match second {
        Ok(_) => panic!("a second server started on the same study"),
        Err(out) => out,
    };
    let pid = first.child.id().to_string();
    assert!(
        said.contains("already being served")
            && said.contains(&pid)
            && said.contains(&first.addr.to_string()),
        "the refusal should name pid {pid} and {}: {said}",
        first.addr
    );
    // The first one is unharmed.
    assert_eq!(first.client().get("/", None).status, 200);
    first.kill();
    // A killed server leaves no stale lock behind. With the links file gone, the organiser
    // gets a new link (the old one stops working); the raters' links are reported lost.
    let old = tokens(&key_path);
    std::fs::remove_file(root.join("STUDY.links.txt")).unwrap();
    let third = Server::start(&study, &key_path, &[]);
    let mut http = third.client();
    assert_eq!(http.get("/", None).status, 200);
    let out = third.output();
    assert!(out.contains("new link: organiser"), "{out}");
    assert!(
        out.contains("links of rater-01, rater-02 are not in the links file"),
        "{out}"
    );
    let new = tokens(&key_path);
    assert_eq!(new.len(), 1);
    assert_eq!(
        http.get("/api/organiser", Some(&new["organiser"])).status,
        200
    );
    assert_eq!(
        http.get("/api/organiser", Some(&old["organiser"])).status,
        401
    );
    assert_eq!(
        http.get("/api/rater", Some(&old["rater-01"])).status,
        200,
        "a rater's link stays valid"
    );
    drop(http);
    drop(third);

    // --public binds beyond loopback, with the TLS warning.
    let public = Server::start(&study, &key_path, &["--public"]);
    std::thread::sleep(Duration::from_millis(100));
    let out = public.output();
    assert!(out.contains("warning") && out.contains("TLS"), "{out}");
}

/// One rater's answers: trial -> (similarity, prompt, ms).
type Answers = BTreeMap<String, (Choice, Choice, u64)>;

fn answer_all(http: &mut Http, token: &str, key: &Key, seed: u64) -> Answers {
    let mut g = Lcg(seed);
    let mut out = Answers::new();
    for t in &key.trials {
        let (s, p, ms) = (g.choice(), g.choice(), 300 + g.next() % 20_000);
        let r = http.post(
            "/api/rater/answer",
            Some(token),
            &json!({"trial": t.id, "similarity": choice_name(s), "prompt": choice_name(p), "ms": ms}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        out.insert(t.id.clone(), (s, p, ms));
    }
    out
}

/// A votes file as the rater page writes it, with the page's rounding of seconds.
fn votes_file(key: &Key, rater: &str, answers: &Answers) -> Value {
    json!({
        "format": "study-votes", "format_version": 1, "study_id": key.study_id, "rater": rater,
        "trials_total": key.trials.len(), "answered": answers.len(),
        "started": "2026-01-01T10:00:00.000Z", "saved": "2026-01-01T10:30:00.000Z",
        "votes": answers.iter().enumerate().map(|(i, (id, (s, p, ms)))| json!({
            "trial": id, "position": i + 1, "similarity": choice_name(*s),
            "prompt": choice_name(*p), "seconds": (*ms as f64 / 100.0).round() / 10.0
        })).collect::<Vec<_>>()
    })
}

/// The JSON tally without the fields that name where votes came from.
fn without_sources(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("files");
    for r in v["per_rater"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("file");
    }
    v
}

#[test]
fn tally_from_the_database_equals_tally_from_votes_files() {
    let root = scratch("tally");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(
        &study,
        &key_path,
        &[
            "--rater", "ann", "--rater", "bo", "--rater", "cy", "--rater", "dee",
        ],
    );
    let tok = tokens(&key_path);
    let mut http = server.client();
    let mut all = Vec::new();
    for (i, name) in ["ann", "bo", "cy"].iter().enumerate() {
        let mut a = answer_all(&mut http, &tok[*name], &key, 11 + i as u64);
        if *name == "cy" {
            // A partial rater, one half-answered trial.
            let keep: Vec<String> = a.keys().take(6).cloned().collect();
            a.retain(|k, _| keep.contains(k));
        }
        all.push((name.to_string(), a));
    }
    // cy's database rows: only the first 6 trials stay answered; the 7th has one answer.
    let cy = &tok["cy"];
    for t in key.trials.iter().skip(6) {
        let body = json!({"trial": t.id, "similarity": null, "prompt": null, "ms": 50});
        assert_eq!(http.post("/api/rater/answer", Some(cy), &body).status, 200);
    }
    let half = &key.trials[6].id;
    let body = json!({"trial": half, "similarity": "tie", "prompt": null, "ms": 777});
    assert_eq!(http.post("/api/rater/answer", Some(cy), &body).status, 200);
    all[2]
        .1
        .insert(half.clone(), (Choice::Tie, Choice::Tie, 777)); // prompt dropped below
    drop(http);

    // While the server runs, `study tally` reads its database (found beside the key).
    let t0 = Instant::now();
    let (db_out, db_err) = moslora_ok(&["study", "tally", "--key", key_path.to_str().unwrap()]);
    println!(
        "tally from the database ({:.2} s):\n{db_out}\n{db_err}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        db_err.contains("dee") && db_err.contains("no answers yet"),
        "{db_err}"
    );
    let db_dir = root.join("STUDY.tally");
    let db_json: Value =
        serde_json::from_slice(&std::fs::read(db_dir.join("tally.json")).unwrap()).unwrap();
    let db_csv = std::fs::read_to_string(db_dir.join("tally.csv")).unwrap();
    let db_md = std::fs::read_to_string(db_dir.join("tally.md")).unwrap();
    server.stop();

    // The same answers as votes files.
    let mut paths = Vec::new();
    for (name, a) in &all {
        let mut v = votes_file(&key, name, a);
        if name == "cy" {
            for e in v["votes"].as_array_mut().unwrap() {
                if e["trial"] == half.as_str() {
                    e["prompt"] = Value::Null;
                }
            }
        }
        let p = root.join(format!("votes-{name}.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        paths.push(p.display().to_string());
    }
    let files_dir = root.join("files.tally");
    let mut args = vec![
        "study",
        "tally",
        "--key",
        key_path.to_str().unwrap(),
        "--out",
        files_dir.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(|s| s.as_str()));
    let (files_out, files_err) = moslora_ok(&args);
    println!("tally from votes files:\n{files_err}");
    let files_json: Value =
        serde_json::from_slice(&std::fs::read(files_dir.join("tally.json")).unwrap()).unwrap();
    let files_csv = std::fs::read_to_string(files_dir.join("tally.csv")).unwrap();
    let files_md = std::fs::read_to_string(files_dir.join("tally.md")).unwrap();

    let report = |s: &str| s.split("\nwrote ").next().unwrap().to_string();
    assert_eq!(
        report(&db_out),
        report(&files_out),
        "the printed reports differ"
    );
    assert_eq!(db_csv, files_csv);
    let md = |s: &str| s.split("\n## Votes files").next().unwrap().to_string();
    assert_eq!(md(&db_md), md(&files_md));
    assert_eq!(
        without_sources(db_json.clone()),
        without_sources(files_json)
    );
    assert_eq!(db_json["raters"], 3);
    assert!(db_md.contains("STUDY.votes.sqlite#ann"), "{db_md}");
    // Both report the partial rater's half answer the same way.
    assert!(
        db_err.contains("only one of the two questions")
            && files_err.contains("only one of the two questions")
    );

    // And the counts are the answers mapped through the key.
    let by_id: HashMap<&str, _> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut want = [0u64; 3];
    for (name, a) in &all {
        for (id, (s, _, _)) in a {
            let t = by_id[id.as_str()];
            if t.repeat_of.is_some() {
                continue;
            }
            let _ = name;
            want[match t.chosen(*s) {
                Some(Which::B) => 0,
                None => 1,
                Some(Which::A) => 2,
            }] += 1;
        }
    }
    let c = &db_json["overall"][0]["summary"]["counts"];
    assert_eq!(
        [
            c["wins"].as_u64().unwrap(),
            c["ties"].as_u64().unwrap(),
            c["losses"].as_u64().unwrap()
        ],
        want
    );

    // Votes files and the database together: one rater from each route.
    let (both, _) = moslora_ok(&[
        "study",
        "tally",
        "--key",
        key_path.to_str().unwrap(),
        "--db",
        root.join("STUDY.votes.sqlite").to_str().unwrap(),
        "--out",
        root.join("both.tally").to_str().unwrap(),
        &paths[0],
    ]);
    assert!(
        both.contains("3 raters"),
        "ann's file and ann's rows are one rater: {both}"
    );
}

#[test]
fn two_raters_in_chromium_and_the_organiser_page() {
    require_browser();
    let root = scratch("browser");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(&study, &key_path, &["--rater", "ann", "--rater", "bo"]);
    let tok = tokens(&key_path);
    let answers_path = root.join("answers.json");
    let t0 = Instant::now();
    let out = std::process::Command::new(common::python())
        .arg(common::repo().join("tests/browser/study_serve.py"))
        .args(["--base", &format!("http://{}", server.addr)])
        .args(["--rater", &format!("ann={}", tok["ann"])])
        .args(["--rater", &format!("bo={}", tok["bo"])])
        .args(["--organiser", &tok["organiser"]])
        .args(["--answers", answers_path.to_str().unwrap()])
        .args([
            "--seed",
            "5",
            "--screenshot",
            root.join("served.png").to_str().unwrap(),
        ])
        .output()
        .expect("running python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}\nbrowser script: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "the scripted raters failed:\n{so}\n{se}\nserver:\n{}",
        server.output()
    );

    let script: Value = serde_json::from_slice(&std::fs::read(&answers_path).unwrap()).unwrap();
    let n = key.trials.len();
    let given = |rater: &str| scripted_answers(&script["raters"][rater]["answers"]);
    let (ann, bo) = (given("ann"), given("bo"));
    assert_eq!(ann.len(), n);
    assert_eq!(bo.len(), n);

    // The organiser's page: progress, and names and comments as text.
    let org = &script["organiser"];
    let rows = org["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["answered"], n as u64, "{r}");
    }
    assert_eq!(rows[0]["rater"], "ann");
    assert_eq!(
        rows[0]["name"], script["html_name"],
        "the name shown as text"
    );
    assert_eq!(
        rows[0]["comment"], script["html_comment"],
        "the comment shown as text"
    );
    assert!(rows[0]["name_html"].as_str().unwrap().contains("&lt;b&gt;"));
    assert_eq!(
        org["injected_elements"], 0,
        "markup from a rater became elements"
    );
    assert_ne!(org["title"], "pwned");
    let tally_text = org["tally_text"].as_str().unwrap();
    assert!(tally_text.contains("2 raters"), "{tally_text}");

    // The server's tally equals the script's answers mapped through the key.
    server.stop();
    let (stdout, _) = moslora_ok(&["study", "tally", "--key", key_path.to_str().unwrap()]);
    println!("{stdout}");
    let tally: Value =
        serde_json::from_slice(&std::fs::read(root.join("STUDY.tally/tally.json")).unwrap())
            .unwrap();
    assert_eq!(tally["raters"], 2);
    for (i, prompt) in [(0, false), (1, true)] {
        let mut want = [0u64; 3];
        for t in key.trials.iter().filter(|t| t.repeat_of.is_none()) {
            for g in [&ann, &bo] {
                let c = if prompt { g[&t.id].1 } else { g[&t.id].0 };
                want[match t.chosen(c) {
                    Some(Which::B) => 0,
                    None => 1,
                    Some(Which::A) => 2,
                }] += 1;
            }
        }
        let c = &tally["overall"][i]["summary"]["counts"];
        let got = [&c["wins"], &c["ties"], &c["losses"]].map(|v| v.as_u64().unwrap());
        println!("criterion {i}: script {want:?}, tally {got:?}");
        assert_eq!(got, want);
    }
    // The organiser page's tally is the tally's own printout.
    assert!(
        stdout.contains(tally_text.lines().nth(2).unwrap().trim()),
        "{tally_text}"
    );
}

#[test]
fn fifty_raters_at_once_lose_no_vote() {
    const RATERS: usize = 50;
    let root = scratch("load");
    let (study, key, key_path) = small_study(&root);
    let server = Server::start(&study, &key_path, &["--raters", &RATERS.to_string()]);
    let tok = tokens(&key_path);
    let addr = server.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(RATERS));
    let handles: Vec<_> = (1..=RATERS)
        .map(|i| {
            let name = format!("rater-{i:02}");
            let token = tok[&name].clone();
            let key = key.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut http = Http::new(addr);
                let mut g = Lcg(1000 + i as u64);
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                let mut given = Answers::new();
                barrier.wait();
                let begin = Instant::now();
                let order: Vec<&str> = key.trials.iter().map(|t| t.id.as_str()).collect();
                let mut expect_ok = |r: std::io::Result<Resp>, what: &str| match r {
                    Ok(r) if r.status == 200 => true,
                    Ok(r) => {
                        errors.push(format!("{name} {what}: {} {}", r.status, r.text()));
                        false
                    }
                    Err(e) => {
                        errors.push(format!("{name} {what}: {e}"));
                        false
                    }
                };
                expect_ok(http.send("GET", "/api/rater", Some(&token), None), "state");
                let session = json!({"name": name, "order": order, "pos": 0, "started": "now"});
                expect_ok(
                    http.send("POST", "/api/rater/session", Some(&token), Some(session.to_string().as_bytes())),
                    "session",
                );
                for t in &key.trials {
                    let (s, p, ms) = (g.choice(), g.choice(), g.next() % 30_000);
                    let body = json!({"trial": t.id, "similarity": choice_name(s), "prompt": choice_name(p), "ms": ms});
                    let sent = Instant::now();
                    let r = http.send("POST", "/api/rater/answer", Some(&token), Some(body.to_string().as_bytes()));
                    latencies.push(sent.elapsed());
                    if expect_ok(r, &t.id) {
                        given.insert(t.id.clone(), (s, p, ms));
                    }
                }
                (name, token, given, latencies, errors, begin, Instant::now())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let begin = results.iter().map(|r| r.5).min().unwrap();
    let end = results.iter().map(|r| r.6).max().unwrap();
    let errors: Vec<&String> = results.iter().flat_map(|r| r.4.iter()).collect();
    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.3.iter().copied()).collect();
    lat.sort();
    let votes = lat.len();
    let q = |p: f64| {
        lat[((p * votes as f64).ceil() as usize).clamp(1, votes) - 1].as_secs_f64() * 1000.0
    };
    let secs = (end - begin).as_secs_f64();
    println!(
        "load: {RATERS} raters at once x {} answers = {votes} votes in {secs:.2} s: {:.0} votes/s; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} error(s)",
        key.trials.len(),
        votes as f64 / secs,
        q(0.5),
        q(0.99),
        q(1.0),
        errors.len()
    );
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(votes, RATERS * key.trials.len());

    // Every vote is there, exactly as sent.
    let mut http = server.client();
    let mut lost = 0;
    for (name, token, given, ..) in &results {
        assert_eq!(given.len(), key.trials.len(), "{name}");
        let s = http.get("/api/rater", Some(token)).json();
        let stored = s["state"]["answers"].as_object().unwrap();
        for (id, (sim, p, ms)) in given {
            let a = &stored.get(id);
            let ok = a.is_some_and(|a| {
                a["similarity"] == choice_name(*sim)
                    && a["prompt"] == choice_name(*p)
                    && a["ms"] == *ms
            });
            lost += usize::from(!ok);
        }
    }
    println!("lost votes: {lost}");
    assert_eq!(lost, 0);
    drop(http);
    let (out, _) = moslora_ok(&["study", "tally", "--key", key_path.to_str().unwrap()]);
    assert!(out.contains(&format!("{RATERS} raters")), "{out}");
}

#[test]
fn acknowledged_votes_survive_sigkill_at_any_moment() {
    const RATERS: usize = 4;
    let root = scratch("kill");
    let (study, key, key_path) = small_study(&root);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut g = Lcg(seed);
    let mut server = Server::start(&study, &key_path, &["--raters", &RATERS.to_string()]);
    let tok = tokens(&key_path);
    let names: Vec<String> = (1..=RATERS).map(|i| format!("rater-{i:02}")).collect();
    let mut total_acked = 0;
    for round in 0..3u64 {
        let addr = server.addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let token = tok[name].clone();
                let trials: Vec<String> = key.trials.iter().map(|t| t.id.clone()).collect();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut http = Http::new(addr);
                    // trial -> ms of the last acknowledged vote; the vote in flight at the kill.
                    let mut acked: HashMap<String, u64> = HashMap::new();
                    let mut in_flight = None;
                    let (mut k, mut n) = (0u64, 0usize);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let trial = &trials[(k as usize + i) % trials.len()];
                        // Each vote is told apart by its ms, unique across rounds and raters.
                        let ms = (round * 1_000_000 + k) * 10 + i as u64;
                        let body = json!({"trial": trial, "similarity": "left", "prompt": "right", "ms": ms});
                        match http.send("POST", "/api/rater/answer", Some(&token), Some(body.to_string().as_bytes())) {
                            Ok(r) if r.status == 200 => {
                                acked.insert(trial.clone(), ms);
                                n += 1;
                            }
                            Ok(r) => panic!("vote refused: {} {}", r.status, r.text()),
                            Err(_) => {
                                in_flight = Some((trial.clone(), ms));
                                break;
                            }
                        }
                        k += 1;
                    }
                    (acked, in_flight, n)
                })
            })
            .collect();
        let wait = Duration::from_millis(150 + g.next() % 750);
        std::thread::sleep(wait);
        server.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        server = Server::start(&study, &key_path, &[]);
        let mut http = server.client();
        for (name, (acked, in_flight, _)) in names.iter().zip(&results) {
            let s = http.get("/api/rater", Some(&tok[name])).json();
            for (trial, ms) in acked {
                let stored = s["state"]["answers"][trial]["ms"].as_u64();
                // The vote in flight at the kill may have committed without its answer arriving.
                let flight = in_flight
                    .as_ref()
                    .filter(|(t, _)| t == trial)
                    .map(|(_, m)| *m);
                assert!(
                    stored == Some(*ms) || (stored.is_some() && stored == flight),
                    "round {round} (seed {seed}, kill after {wait:?}): {name} {trial}: acknowledged ms {ms}, \
                     in flight {flight:?}, stored {stored:?}"
                );
            }
        }
        let acks: usize = results.iter().map(|r| r.2).sum();
        let cells: usize = results.iter().map(|r| r.0.len()).sum();
        let flying = results.iter().filter(|r| r.1.is_some()).count();
        total_acked += acks;
        println!(
            "round {round}: SIGKILL after {wait:?} (seed {seed}): {acks} votes acknowledged, {flying} in \
             flight; the last acknowledged vote of all {cells} rater x trial cells is in the database"
        );
    }
    assert!(total_acked > 0, "no vote was acknowledged before the kills");
}
