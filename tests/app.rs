//! `moslora app` through the real binary over HTTP, on the tiny model with a few steps: photos
//! in (and hostile uploads out), a comparison from a preset run to "done" with its live
//! events, results and a kohya download; Stop then Resume, and a SIGKILLed app (and job)
//! restarted, each end on the bits of an uninterrupted job; two queued jobs run one after the
//! other; cross-origin and token-less changes, `../` ids and markup are refused or escaped;
//! a finished job made into a served study takes a rater's answers.

mod common;
mod serve_support;
mod study_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, scratch, tensors, tiny_model};
use serde_json::{json, Value};
use serve_support::{Http, Resp};

/// A running app on a free loopback port.
struct App {
    child: Child,
    addr: SocketAddr,
    csrf: String,
}

impl App {
    fn start(data: &Path) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args([
                "app",
                "--data",
                data.to_str().unwrap(),
                "--bind",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the app ended before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let mut app = App {
            child,
            addr,
            csrf: String::new(),
        };
        let page = app.get("/subjects").text();
        let at = page.find("name=\"csrf\" content=\"").unwrap() + 21;
        app.csrf = page[at..at + 64].to_string();
        app
    }

    /// A request with this server's Host and Origin and the CSRF token, plus `extra` headers
    /// (which replace them when named the same).
    fn req(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Resp {
        let origin = format!("http://{}", self.addr);
        let host = self.addr.to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("Host", &host),
            ("Origin", &origin),
            ("X-CSRF-Token", &self.csrf),
        ];
        for (k, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            if !v.is_empty() {
                headers.push((k, v));
            }
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        Http::new(self.addr).raw(&bytes).unwrap()
    }

    fn get(&self, path: &str) -> Resp {
        Http::new(self.addr).get(path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        self.req(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn upload(&self, subject: i64, name: &str, bytes: &[u8]) -> Resp {
        self.req(
            "PUT",
            &format!("/api/subjects/{subject}/photos"),
            &[
                ("X-File-Name", name),
                ("Content-Type", "application/octet-stream"),
            ],
            bytes,
        )
    }

    fn job(&self, id: i64) -> Value {
        self.get(&format!("/api/jobs/{id}")).json()
    }

    /// Waits until job `id` is in `state` (panics after `limit`, with its log).
    fn wait_for(&self, data: &Path, id: i64, state: &str, limit: Duration) -> Value {
        let t = Instant::now();
        loop {
            let j = self.job(id);
            if j["state"] == state {
                return j;
            }
            assert!(
                t.elapsed() < limit,
                "job {id} is {} after {limit:?}, not {state}: {}",
                j["state"],
                std::fs::read_to_string(data.join(format!("jobs/{id}/log.txt")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LIMIT: Duration = Duration::from_secs(180);

/// A subject with the 5 photos of assets/subject; its id.
fn subject_with_photos(app: &App, name: &str) -> i64 {
    let r = app.post(
        "/api/subjects",
        &json!({ "name": name, "class": "robot", "identifier": "sks" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    let mut photos: Vec<PathBuf> = std::fs::read_dir(repo().join("assets/subject"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "png" || e == "jpg" || e == "webp")
        })
        .collect();
    photos.sort();
    assert_eq!(photos.len(), 5);
    for p in &photos {
        let r = app.upload(
            id,
            &p.file_name().unwrap().to_string_lossy(),
            &std::fs::read(p).unwrap(),
        );
        assert_eq!(r.status, 200, "{}: {}", p.display(), r.text());
    }
    id
}

/// The tiny model, listed through the Models page's check; its id.
fn tiny(app: &App) -> i64 {
    let r = app.post(
        "/api/models",
        &json!({ "path": tiny_model(), "name": "tiny" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_i64().unwrap()
}

/// The Toy world preset's RUN.yaml for this subject and model, cut to `steps` tiny steps (a
/// checkpoint every step, a sample every 2) and one seed of 2 prompts with 2 sampler steps.
fn short_yaml(app: &App, subject: i64, model: i64, steps: u64) -> String {
    let form = json!({ "subject": subject, "model": model, "preset": "toy",
        "lines": "a [V] {class} in the snow\na [V] {class} on a beach" });
    short_yaml_of(app, &form, steps)
}

/// As [`short_yaml`], from the New comparison form `form` (its adapters chosen, say).
fn short_yaml_of(app: &App, form: &Value, steps: u64) -> String {
    let r = app.post("/api/preview", form);
    assert_eq!(r.status, 200, "{}", r.text());
    let yaml = r.json()["yaml"].as_str().unwrap().to_string();
    for want in [
        "steps: 500",
        "batch_size: 4",
        "checkpoint_every: 25",
        "sample_every: 25",
    ] {
        assert!(yaml.contains(want), "{want} not in {yaml}");
    }
    yaml.replace("steps: 500", &format!("steps: {steps}"))
        .replace("batch_size: 4", "batch_size: 1")
        .replace("checkpoint_every: 25", "checkpoint_every: 1")
        .replace("sample_every: 25", "sample_every: 2")
        .replace("seeds: [0, 1, 2, 3]", "seeds: [0]")
        .replace("  steps: 30\n", "  steps: 2\n")
}

fn add_job(app: &App, subject: i64, model: i64, yaml: &str) -> i64 {
    let r = app.post(
        "/api/jobs",
        &json!({ "subject": subject, "model": model, "preset": "toy", "yaml": yaml }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_i64().unwrap()
}

fn events(data: &Path, id: i64) -> Vec<Value> {
    std::fs::read_to_string(data.join(format!("jobs/{id}/events.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until job `id` has trained `step` steps of LoRA.
fn wait_for_step(data: &Path, id: i64, step: u64) {
    let t = Instant::now();
    while !events(data, id)
        .iter()
        .any(|e| e["event"] == "step" && e["step"].as_u64() >= Some(step))
    {
        assert!(t.elapsed() < LIMIT, "job {id} never reached step {step}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn out(data: &Path, id: i64) -> PathBuf {
    data.join(format!("jobs/{id}/out"))
}

/// Both adapters of two jobs hold the same tensors, and their loss logs match.
fn assert_same_bits(data: &Path, a: i64, b: i64) {
    for kind in ["lora", "moslora"] {
        let (x, y) = (
            tensors(&out(data, a).join(kind).join("adapter.safetensors")),
            tensors(&out(data, b).join(kind).join("adapter.safetensors")),
        );
        assert_eq!(x.len(), y.len());
        for (name, t) in &x {
            assert!(
                t.equal(&y[name]),
                "job {b}: {kind} {name} differs from job {a}'s"
            );
        }
        assert_eq!(
            std::fs::read_to_string(out(data, a).join(kind).join("loss.csv")).unwrap(),
            std::fs::read_to_string(out(data, b).join(kind).join("loss.csv")).unwrap(),
            "{kind} loss log"
        );
    }
}

/// The server-sent events of job `id` until one contains `until`.
fn sse_until(app: &App, id: i64, until: &str) -> String {
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /jobs/{id}/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        app.addr
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A real 4 x 4 PNG whose IHDR (with a correct CRC) claims `w` x `h` pixels.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([9, 99, 199]));
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        img.as_raw(),
        4,
        4,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn photos_to_results_with_hostile_input_refused() {
    let data = scratch("e2e");
    let app = App::start(&data);
    // Pages carry the policy; the shipped toy model is listed.
    let models = app.get("/models");
    assert!(models
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    assert!(models.text().contains("Toy world (shipped)"));

    let markup = "<img src=x onerror=alert(1)>";
    let subject = subject_with_photos(&app, markup);
    let page = app.get(&format!("/subjects/{subject}")).text();
    assert!(!page.contains(markup) && page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert_eq!(page.matches("/thumb\"").count(), 5);
    // Each photo's checks in the command line's own words: the one too small for SDXL says
    // what `compare` would say of it at 1024 px.
    let folder = moslora::train::dataset::scan_photos(
        &repo().join("assets/subject"),
        moslora::train::dataset::min_photo_side(1024),
        1024,
    )
    .unwrap();
    assert_eq!(folder.skipped.len(), 1, "{:?}", folder.skipped);
    assert!(
        page.contains(&moslora::html::esc(&folder.skipped[0].why)),
        "{} not in {page}",
        folder.skipped[0].why
    );
    for path in ["/photos/1/thumb", "/photos/5/thumb"] {
        let r = app.get(path);
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/png"))
        );
    }

    // Hostile uploads: clear errors, nothing kept.
    let kept = || {
        std::fs::read_dir(data.join(format!("subjects/{subject}/photos")))
            .unwrap()
            .count()
    };
    let before = kept();
    let gif =
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00\x3b";
    for (name, bytes, says) in [
        (
            "cat.png",
            gif.to_vec(),
            "Gif picture whatever its name says",
        ),
        ("empty.png", Vec::new(), "an empty file"),
        ("huge.png", png_claiming(60_000, 60_000), "60000 x 60000"),
        ("text.jpg", b"hello".to_vec(), "not a picture"),
        (
            "robot.mask.png",
            std::fs::read(repo().join("assets/subject-masks/01_sky.mask.png")).unwrap(),
            "a mask for masked loss",
        ),
    ] {
        let r = app.upload(subject, name, &bytes);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(says),
            "{name}: {}",
            r.text()
        );
    }
    let dup = std::fs::read(
        repo().join("assets/subject").join(
            std::fs::read_dir(repo().join("assets/subject"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        ),
    )
    .unwrap();
    let r = app.upload(subject, "again.png", &dup);
    assert!(
        r.status == 400 && r.text().contains("duplicate"),
        "{}",
        r.text()
    );
    // 200 MB announced: refused on the headers, before a byte of the body.
    let mut h = Http::new(app.addr);
    let head = format!(
        "PUT /api/subjects/{subject}/photos HTTP/1.1\r\nHost: {a}\r\nOrigin: http://{a}\r\n\
         X-CSRF-Token: {}\r\nContent-Length: {}\r\n\r\n",
        app.csrf,
        200u64 << 20,
        a = app.addr
    );
    assert_eq!(h.raw(head.as_bytes()).unwrap().status, 413);
    assert_eq!(kept(), before);

    // Captions: markup shown as text, written beside the photo.
    let r = app.post(
        "/api/photos/1/caption",
        &json!({ "caption": "a photo of [V] {class} <script>alert(1)</script>" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = app.get(&format!("/subjects/{subject}")).text();
    assert!(!page.contains("<script>alert") && page.contains("&lt;script&gt;alert(1)"));
    let captions: Vec<PathBuf> = std::fs::read_dir(data.join(format!("subjects/{subject}/photos")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    assert_eq!(captions.len(), 1);
    assert!(std::fs::read_to_string(&captions[0])
        .unwrap()
        .contains("<script>"));
    let r = app.post("/api/photos/1/caption", &json!({ "caption": "" }));
    assert_eq!(r.status, 200);

    // A photo replaced: refused bytes leave it as it was; a good picture takes its place and
    // its caption.
    let r = app.post(
        "/api/photos/2/caption",
        &json!({ "caption": "a [V] {class} on sand" }),
    );
    assert_eq!(r.status, 200);
    let r = app.req(
        "PUT",
        "/api/photos/2/replace",
        &[("X-File-Name", "bad.png")],
        b"hello",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(app.get("/photos/2/thumb").status, 200);
    let mut png = Vec::new();
    image::RgbImage::from_fn(300, 280, |x, y| image::Rgb([x as u8, y as u8, 77]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let r = app.req(
        "PUT",
        "/api/photos/2/replace",
        &[("X-File-Name", "new sand.png")],
        &png,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let new = r.json()["id"].as_i64().unwrap();
    assert_eq!(app.get("/photos/2/thumb").status, 404);
    assert_eq!(app.get(&format!("/photos/{new}/thumb")).status, 200);
    let page = app.get(&format!("/subjects/{subject}")).text();
    assert_eq!(page.matches("/thumb\"").count(), 5);
    assert!(page.contains("new sand.png") && page.contains("a [V] {class} on sand"));
    assert_eq!(
        kept(),
        before + 1,
        "the old photo and its caption file gone, the new one's in"
    );

    // Changes from elsewhere, or without the page's token, are refused; ids are numbers.
    let body = json!({ "name": "x", "class": "y", "identifier": "z" }).to_string();
    for extra in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "")],
        vec![("X-CSRF-Token", "0")],
        vec![("X-CSRF-Token", "")],
        vec![("Host", "evil.example"), ("Origin", "http://evil.example")],
    ] {
        let r = app.req("POST", "/api/subjects", &extra, body.as_bytes());
        assert_eq!(r.status, 403, "{extra:?}: {}", r.text());
    }
    for path in [
        "/subjects/..%2F..%2Fapp.sqlite",
        "/subjects/../app.sqlite",
        "/photos/..%2f1/thumb",
        "/jobs/1%2F..%2F..%2Fapp.sqlite/results",
        "/jobs/1/image/..%2F..%2Frun.yaml",
        "/jobs/1/sample/..%2F..%2F/1",
        "/jobs/1/download/..%2Frun.yaml",
        "/api/jobs/-1",
    ] {
        let r = app.get(path);
        assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        assert!(!r.text().contains("SQLite format"), "{path}");
    }
    // The advanced panel's RUN.yaml, checked as it is typed: the command line's message and
    // its "did you mean".
    let typo = data.join("typo.yaml");
    std::fs::write(&typo, "train:\n  stpes: 3\n").unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["compare", typo.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(2));
    let r = app.post("/api/check", &json!({ "yaml": "train:\n  stpes: 3\n" }));
    assert_eq!(r.status, 200);
    let said = r.json();
    assert_eq!(said["ok"], false);
    let msg = said["error"].as_str().unwrap();
    assert!(msg.contains("did you mean `steps`?"), "{msg}");
    let core = msg.trim_start_matches("RUN.yaml: ");
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains(core),
        "{core} / {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let r = app.post("/api/check", &json!({ "yaml": "train:\n  steps: 3\n" }));
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    let r = app.post(
        "/api/check",
        &json!({ "yaml": "adapter:\n  mixer: orthogonl\n" }),
    );
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("did you mean `orthogonal`?"));
    let r = app.post("/api/models", &json!({ "path": "/nonexistent/sdxl" }));
    assert!(
        r.status == 400 && r.text().contains("does not exist"),
        "{}",
        r.text()
    );

    // A subject without enough photos cannot start a comparison: said at once.
    let r = app.post(
        "/api/subjects",
        &json!({ "name": "empty", "class": "dog", "identifier": "sks" }),
    );
    let empty = r.json()["id"].as_i64().unwrap();
    let r = app.post(
        "/api/jobs",
        &json!({ "subject": empty, "model": 1, "preset": "toy" }),
    );
    assert!(
        r.status == 400 && r.text().contains("empty: 0 photos (at least 3"),
        "{}",
        r.text()
    );
    assert!(app.get("/api/jobs/1").status == 404);

    // A short comparison, followed live.
    let model = tiny(&app);
    let yaml = short_yaml(&app, subject, model, 4);
    let job = add_job(&app, subject, model, &yaml);
    let stream = sse_until(&app, job, "\"state\":\"done\"");
    assert!(stream.contains("event: progress") && stream.contains("\"event\":\"step\""));
    assert!(stream.contains("\"what\":\"sample\""), "{stream}");
    let page = app.get(&format!("/jobs/{job}")).text();
    assert!(
        page.contains("data-chart") && page.contains("compare") && page.contains("--progress json")
    );
    let sample = app.get(&format!("/jobs/{job}/sample/lora/2"));
    assert_eq!(
        (sample.status, sample.header("content-type")),
        (200, Some("image/png"))
    );

    // Results: pairs from the same noise, each picture labelled, with a flip; the verdicts
    // in words (the command line's own sentences) and the samples along the way by step.
    let results = app.get(&format!("/jobs/{job}/results")).text();
    assert_eq!(results.matches("class=\"flipper\"").count(), 2, "{results}");
    assert_eq!(
        results
            .matches("<figcaption data-label>LoRA</figcaption>")
            .count(),
        2
    );
    assert_eq!(
        results
            .matches("<figcaption data-label>MoSLoRA</figcaption>")
            .count(),
        2
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(out(&data, job).join("renders/manifest.json")).unwrap(),
    )
    .unwrap();
    let verdicts = manifest["metrics"]["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty());
    for v in verdicts {
        let want = format!("<li>{}</li>", moslora::html::esc(v.as_str().unwrap()));
        assert!(results.contains(&want), "{want} not in {results}");
    }
    assert!(results.contains("<h2>Step series</h2>"), "{results}");
    for step in [2, 4] {
        for kind in ["lora", "moslora"] {
            assert!(
                results.contains(&format!("/jobs/{job}/sample/{kind}/{step}\"")),
                "{kind} {step}"
            );
        }
    }
    let img = app.get(&format!("/jobs/{job}/image/0"));
    assert_eq!(img.header("content-type"), Some("image/png"));
    let kohya = app.get(&format!("/jobs/{job}/download/kohya-moslora"));
    assert_eq!(kohya.status, 200);
    let n = u64::from_le_bytes(kohya.body[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&kohya.body[8..8 + n]).unwrap();
    assert!(header
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("lora_unet_")));
    // diffusers loads the download as its users do (`load_lora_weights`), every layer of it.
    let kohya_file = data.join("kohya-moslora.safetensors");
    std::fs::write(&kohya_file, &kohya.body).unwrap();
    let png = data.join("diffusers-kohya.png");
    let model = tiny_model();
    let args: Vec<&Path> = vec![
        &model,
        &kohya_file,
        Path::new("a photo of sks robot"),
        Path::new("0"),
        Path::new("2"),
        Path::new("64"),
        Path::new("64"),
        &png,
    ];
    common::run_reference("check_lora_export.py", &args);
    // The model with the adapter merged in: one single-file checkpoint, sent as a stream.
    let merged = app.get(&format!("/jobs/{job}/download/merged-lora"));
    assert_eq!(merged.status, 200, "{}", merged.text());
    assert!(merged
        .header("content-disposition")
        .unwrap()
        .contains("job1-lora-merged.safetensors"));
    let n = u64::from_le_bytes(merged.body[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&merged.body[8..8 + n]).unwrap();
    assert!(
        header
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("model.diffusion_model.")),
        "{header}"
    );
    assert_eq!(
        merged.body,
        std::fs::read(data.join("exports/job1-lora-merged.safetensors")).unwrap()
    );
    assert_eq!(
        app.get(&format!("/jobs/{job}/download/merged-x")).status,
        404
    );
    // Make a study, and answer two trials as a rater on the served study.
    let r = app.post(&format!("/api/jobs/{job}/study"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = app.get(&format!("/jobs/{job}/study")).text();
    assert!(page.contains("data-organiser"), "{page}");
    assert_eq!(page.matches("data-link").count(), 3, "{page}");
    let study = data.join(format!("studies/{job}"));
    let links = std::fs::read_to_string(study.join("study.links.txt")).unwrap();
    let link = |who: &str| {
        let l = links.lines().find(|l| l.starts_with(who)).unwrap();
        l.split('\t').nth(1).unwrap().to_string()
    };
    let rater = link("rater-");
    let (base, token) = rater.split_once("/#").unwrap();
    let served: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let key: Value =
        serde_json::from_slice(&std::fs::read(study.join("study.key.json")).unwrap()).unwrap();
    let mut http = Http::new(served);
    for t in key["trials"].as_array().unwrap().iter().take(2) {
        let vote = json!({"trial": t["id"], "similarity": "left", "prompt": "tie", "ms": 900});
        let r = http.post("/api/rater/answer", Some(token), &vote);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let organiser = link("organiser");
    let org_token = organiser.rsplit_once('#').unwrap().1;
    let o = http.get("/api/organiser", Some(org_token)).json();
    let answered: u64 = o["raters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["answered"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, 2, "{o}");
    // The study server gone with the app (a restarted machine): the restarted app serves the
    // study again on its address, so the links sent still work, with the answers kept.
    let stop_study = || {
        let pid = std::fs::read_to_string(study.join("serve.pid")).unwrap();
        assert!(Command::new("kill")
            .arg(pid.trim())
            .status()
            .unwrap()
            .success());
        let t = Instant::now();
        while TcpStream::connect(served).is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the study server runs on"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    stop_study();
    app.kill();
    let app = App::start(&data);
    let t = Instant::now();
    let o = loop {
        if TcpStream::connect(served).is_ok() {
            break Http::new(served)
                .get("/api/organiser", Some(org_token))
                .json();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the study is not served again"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let answered: u64 = o["raters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["answered"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, 2, "{o}");
    assert_eq!(
        app.get(&format!("/jobs/{job}/study"))
            .text()
            .matches("data-link")
            .count(),
        3
    );
    stop_study();
    // Scored by the toy world's judge (the Toy world preset's metrics), shown as text.
    assert!(results.contains("<h2>Scores</h2>"), "{results}");
    let diffusers = app.get(&format!("/jobs/{job}/download/diffusers-lora"));
    assert_eq!(diffusers.status, 200);
    let n = u64::from_le_bytes(diffusers.body[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&diffusers.body[8..8 + n]).unwrap();
    assert!(
        header
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("unet.")),
        "{header}"
    );
    let lora = app.get(&format!("/jobs/{job}/download/lora"));
    assert_eq!(
        lora.body,
        std::fs::read(out(&data, job).join("lora/adapter.safetensors")).unwrap()
    );
    app.kill();
    std::fs::remove_dir_all(&data).unwrap();
}

/// The form's adapters: three of the five families chosen go into the job's RUN.yaml, are
/// each trained, and are the job page's curves, the results' labelled columns and the
/// downloads; fewer than two are refused with a clear message, and no job is made.
#[test]
fn chosen_adapters_are_the_jobs_columns() {
    let data = scratch("families");
    let app = App::start(&data);
    let subject = subject_with_photos(&app, "robot");
    let model = tiny(&app);
    // The form offers every family, the default pair ticked, and `same_parameters`.
    let page = app.get("/new").text();
    for (name, label) in [
        ("lora", "LoRA"),
        ("moslora", "MoSLoRA"),
        ("dora", "DoRA"),
        ("loha", "LoHa"),
        ("lokr", "LoKr"),
    ] {
        let ticked = name == "lora" || name == "moslora";
        let want = format!(
            "name=\"adapters\" value=\"{name}\" data-list{}> <b>{label}</b>",
            if ticked { " checked" } else { "" }
        );
        assert!(page.contains(&want), "{want} not in {page}");
    }
    assert!(page.contains("name=\"same_parameters\"") && page.contains("name=\"mixer\""));
    // Fewer than two: refused, and no job made.
    for chosen in [json!([]), json!(["dora"]), json!(["loha", "loha"])] {
        let form = json!({ "subject": subject, "model": model, "preset": "toy",
            "adapters": chosen });
        let r = app.post("/api/jobs", &form);
        assert!(
            r.status == 400 && r.text().contains("choose at least two adapters to compare"),
            "{chosen}: {}",
            r.text()
        );
    }
    let r = app.post(
        "/api/jobs",
        &json!({ "subject": subject, "model": model, "preset": "toy",
            "adapters": ["lora", "lycoris"] }),
    );
    assert!(
        r.status == 400
            && r.json()["error"]
                .as_str()
                .unwrap()
                .contains("unknown adapter \"lycoris\": expected one of lora, moslora, dora"),
        "{}",
        r.text()
    );
    // The advanced panel's RUN.yaml naming one adapter is refused too.
    let one = short_yaml(&app, subject, model, 2)
        .replace("adapters: [lora, moslora]", "adapters: [dora]");
    let r = app.post(
        "/api/jobs",
        &json!({ "subject": subject, "model": model, "preset": "toy", "yaml": one }),
    );
    assert!(
        r.status == 400 && r.text().contains("at least two adapters"),
        "{}",
        r.text()
    );
    assert_eq!(app.get("/api/jobs/1").status, 404);

    let form = json!({ "subject": subject, "model": model, "preset": "toy",
        "lines": "a [V] {class} in the snow\na [V] {class} on a beach",
        "adapters": ["loha", "lora", "dora"], "same_parameters": true });
    let yaml = short_yaml_of(&app, &form, 2);
    assert!(
        yaml.contains("adapters: [lora, dora, loha]\nsame_parameters: true\n"),
        "{yaml}"
    );
    let job = add_job(&app, subject, model, &yaml);
    app.wait_for(&data, job, "done", LIMIT);
    let cfg = moslora::config::RunConfig::load(&data.join(format!("jobs/{job}/run.yaml"))).unwrap();
    assert_eq!(cfg.adapters, ["lora", "dora", "loha"]);
    assert!(cfg.same_parameters);
    for kind in ["lora", "dora", "loha"] {
        assert!(
            out(&data, job)
                .join(kind)
                .join("adapter.safetensors")
                .is_file(),
            "{kind}"
        );
    }
    assert!(!out(&data, job).join("moslora").exists());
    let page = app.get(&format!("/jobs/{job}")).text();
    for kind in ["lora", "dora", "loha"] {
        assert!(
            page.contains(&format!("data-series=\"{kind}\"")),
            "{kind}: {page}"
        );
    }
    assert!(!page.contains("data-series=\"moslora\""), "{page}");
    let results = app.get(&format!("/jobs/{job}/results")).text();
    assert!(
        results.contains("<h2>LoRA, DoRA and LoHa from the same noise</h2>"),
        "{results}"
    );
    for label in ["LoRA", "DoRA", "LoHa"] {
        // One labelled picture per prompt (2 prompts, one seed), a step-series column.
        assert_eq!(
            results
                .matches(&format!("<figcaption data-label>{label}</figcaption>"))
                .count(),
            2,
            "{label}: {results}"
        );
        assert!(
            results.contains(&format!("<th>{label}</th>")),
            "{label}: {results}"
        );
    }
    assert!(!results.contains("MoSLoRA"), "{results}");
    for kind in ["lora", "dora", "loha"] {
        assert!(
            results.contains(&format!("data-download=\"{kind}\"")),
            "{kind}"
        );
    }
    let loha = app.get(&format!("/jobs/{job}/download/loha"));
    assert_eq!(
        loha.body,
        std::fs::read(out(&data, job).join("loha/adapter.safetensors")).unwrap()
    );
    // Its study sets its first two adapters against each other (no MoSLoRA to set LoRA against).
    let r = app.post(&format!("/api/jobs/{job}/study"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = app.get(&format!("/jobs/{job}/study")).text();
    assert!(
        page.contains("A blind study of LoRA against DoRA"),
        "{page}"
    );
    let study = data.join(format!("studies/{job}"));
    let pid = std::fs::read_to_string(study.join("serve.pid")).unwrap();
    assert!(Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap()
        .success());
    app.kill();
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn stop_resume_kill_and_queue_order_keep_the_bits() {
    let data = scratch("faults");
    let app = App::start(&data);
    let subject = subject_with_photos(&app, "robot");
    let model = tiny(&app);
    // Samples only at the end (so that one drawn at another step was asked for).
    let yaml =
        short_yaml(&app, subject, model, 40).replace("sample_every: 2", "sample_every: 1000");

    // Two jobs queued at once run one after the other: the second waits while the first runs.
    let whole = add_job(&app, subject, model, &yaml);
    let stopped = add_job(&app, subject, model, &yaml);
    app.wait_for(&data, whole, "running", LIMIT);
    assert_eq!(app.job(stopped)["state"], "queued");
    // Moving a waiting job up does not disturb the running one.
    assert_eq!(
        app.post(&format!("/api/jobs/{stopped}/up"), &json!({}))
            .status,
        200
    );
    // "Sample now" on the running job: a sample at the next step, and (below) the same bits
    // as a job that drew none.
    wait_for_step(&data, whole, 3);
    let r = app.post(&format!("/api/jobs/{whole}/sample"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app.post(&format!("/api/jobs/{stopped}/sample"), &json!({}));
    assert_eq!(r.status, 400, "a waiting job draws no sample: {}", r.text());
    app.wait_for(&data, whole, "done", LIMIT);
    let asked: Vec<u64> = events(&data, whole)
        .iter()
        .filter(|e| e["event"] == "file" && e["what"] == "sample")
        .filter_map(|e| e["step"].as_u64())
        .filter(|&s| s < 40)
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0] > 3, "{asked:?}");
    for kind in ["lora", "moslora"] {
        assert!(!out(&data, whole).join(kind).join("sample-now").exists());
    }

    // Stop, then Resume: the same bits as the uninterrupted job.
    wait_for_step(&data, stopped, 3);
    let asked = Instant::now();
    let r = app.post(&format!("/api/jobs/{stopped}/stop"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    app.wait_for(&data, stopped, "stopped", Duration::from_secs(30));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert_eq!(events(&data, stopped).last().unwrap()["event"], "stopped");
    assert!(!out(&data, stopped)
        .join("lora/adapter.safetensors")
        .exists());
    assert_eq!(
        app.post(&format!("/api/jobs/{stopped}/resume"), &json!({}))
            .status,
        200
    );
    app.wait_for(&data, stopped, "done", LIMIT);
    assert_same_bits(&data, whole, stopped);
    let log = std::fs::read_to_string(data.join(format!("jobs/{stopped}/events.jsonl"))).unwrap();
    assert!(log.contains("resuming at step"), "{log}");

    // SIGKILL the app and its job mid-run (a crashed machine), restart: it resumes.
    let killed = add_job(&app, subject, model, &yaml);
    wait_for_step(&data, killed, 3);
    let pid = events(&data, killed)
        .iter()
        .rev()
        .find(|e| e["event"] == "start")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    app.kill();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let app = App::start(&data);
    app.wait_for(&data, killed, "done", LIMIT);
    assert_same_bits(&data, whole, killed);
    let ev = events(&data, killed);
    assert_eq!(ev.iter().filter(|e| e["event"] == "start").count(), 2);
    assert!(ev.iter().any(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.contains("resuming at step"))));

    // The queue page lists them all, each state escaped and shown.
    let q = app.get("/queue").text();
    assert_eq!(q.matches("state-done").count(), 3, "{q}");
    app.kill();
    std::fs::remove_dir_all(&data).unwrap();
}

/// Runs `tests/browser/app.py` against `app` with `args` (beside the base, photos, downloads,
/// screenshots and output): what it saw, after asserting that it succeeded.
fn browse(app: &App, data: &Path, args: &[&str]) -> Value {
    let downloads = data.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let seen_path = data.join("seen.json");
    let out = Command::new(common::python())
        .arg(repo().join("tests/browser/app.py"))
        .args(["--base", &format!("http://{}", app.addr)])
        .args(["--photos", repo().join("assets/subject").to_str().unwrap()])
        .args(["--screenshots", data.join("screenshots").to_str().unwrap()])
        .args(["--downloads", downloads.to_str().unwrap()])
        .args(["--out", seen_path.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let seen: Value = serde_json::from_slice(&std::fs::read(&seen_path).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{}\n{}\nsaw {seen}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seen["alerts"], 0);
    assert_eq!(seen["photos"], 5);
    assert!(seen["command"].as_str().unwrap().contains("compare"));
    assert_eq!(seen["flipped"], true);
    assert_eq!(seen["flip_label"], "MoSLoRA");
    assert_eq!(seen["labels"], json!(["LoRA", "MoSLoRA"]));
    assert!(
        seen["yaml_typo"]
            .as_str()
            .unwrap()
            .contains("unknown field `stpes`"),
        "{seen}"
    );
    assert!(
        seen["yaml_ok"].as_str().unwrap().contains("steps on cpu"),
        "{seen}"
    );
    // The adapters chosen in the page: the default pair ticked, one alone refused, both again
    // in the RUN.yaml.
    assert_eq!(
        seen["adapters_ticked"],
        json!(["lora", "moslora"]),
        "{seen}"
    );
    assert!(
        seen["adapters_refused"]
            .as_str()
            .unwrap()
            .contains("choose at least two adapters to compare (1 chosen)"),
        "{seen}"
    );
    assert_eq!(seen["adapters_yaml"], true, "{seen}");
    let kohya = std::fs::read(seen["download"].as_str().unwrap()).unwrap();
    let n = u64::from_le_bytes(kohya[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&kohya[8..8 + n]).unwrap();
    assert!(header
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("lora_unet_")));
    let links = seen["rater_links"].as_array().unwrap();
    assert_eq!(links.len(), 3);
    assert!(links.iter().all(|l| l.as_str().unwrap().contains("/#")));
    let pid = std::fs::read_to_string(data.join("studies/1/serve.pid")).unwrap();
    assert!(Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap()
        .success());
    for page in [
        "subject", "models", "new", "job", "results", "study", "queue",
    ] {
        let shot = data.join(format!("screenshots/app-{page}.png"));
        assert!(shot.is_file(), "{page}");
    }
    seen
}

/// The whole path in headless Chromium (`tests/browser/app.py`): a subject named with markup
/// and 5 photos through the file input, a model, a short comparison from the Toy world preset
/// watched to "done" with both loss curves and samples, the results flipped, the kohya export
/// downloaded, a study made (its rater links shown); screenshots of every page, no alert ever.
#[test]
fn in_chromium_from_photos_to_a_kohya_file() {
    study_support::require_browser();
    let data = scratch("browser");
    let app = App::start(&data);
    let seen = browse(
        &app,
        &data,
        &["--model", tiny_model().to_str().unwrap(), "--steps", "6"],
    );
    assert!(seen["subject_title"]
        .as_str()
        .unwrap()
        .contains("<img src=x"));
    assert!(seen["lora_points"].as_u64().unwrap() >= 6);
    // `validate_every: 3` of 6 steps: before the first step, at 3 and at 6, for each adapter.
    for k in ["lora", "moslora"] {
        assert_eq!(seen["validation_points"][k], 3, "{seen}");
    }
    let text = seen["validation_text"].as_str().unwrap();
    assert!(
        text.starts_with("validation ") && text.ends_with("(step 6)"),
        "{seen}"
    );
    assert!(seen["samples"].as_u64().unwrap() >= 2);
    app.kill();
    std::fs::remove_dir_all(&data).unwrap();
}

/// The README's screenshots (`docs/app-*.png`), only when `MOSLORA_SCREENSHOTS` is set:
/// the same path as a person would walk it, on a realistic run (the subject "robot" with the
/// bundled photos, the shipped toy model, the Toy world preset at its 500 steps on one seed),
/// so that the samples and results show the robot learnt. About 2-3 minutes on 2 cores.
#[test]
fn readme_screenshots_from_a_realistic_run() {
    if std::env::var_os(common::SCREENSHOTS_ENV).is_none() {
        eprintln!("MOSLORA_SCREENSHOTS is not set: the README's screenshots are left as they are");
        return;
    }
    study_support::require_browser();
    let data = scratch("screenshots");
    let app = App::start(&data);
    let toy = moslora::shipped::toy_model();
    let seen = browse(
        &app,
        &data,
        &[
            "--model",
            toy.to_str().unwrap(),
            "--model-name",
            "Toy world (shipped)",
            "--steps",
            "500",
            "--realistic",
        ],
    );
    assert!(seen["subject_title"].as_str().unwrap().contains("robot"));
    assert!(seen["lora_points"].as_u64().unwrap() >= 500);
    assert!(seen["samples"].as_u64().unwrap() >= 8);
    // The status line in each phase's own unit: steps while training, images while rendering.
    let lines: Vec<&str> = seen["status"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("training") && l.contains(" / 500") && l.contains("steps/s")),
        "{lines:?}"
    );
    let rendering: Vec<&&str> = lines.iter().filter(|l| l.contains("image ")).collect();
    assert!(
        rendering.iter().all(|l| !l.contains("step")),
        "{rendering:?}"
    );
    assert!(
        rendering
            .iter()
            .any(|l| l.contains("images/s") || l.contains("s/image")),
        "{rendering:?}"
    );
    for e in std::fs::read_dir(data.join("screenshots")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&p, common::docs_picture(&name)).unwrap();
    }
    app.kill();
    std::fs::remove_dir_all(&data).unwrap();
}

/// Loopback unless `--public`, and `--public` only with a password: refused with exit 2 and
/// the flag to change named.
#[test]
fn beyond_loopback_only_with_public_and_a_password() {
    let data = scratch("bind");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args(["app", "--data", data.to_str().unwrap()])
            .args(args)
            .env_remove("MOSLORA_APP_PASSWORD")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--bind", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--public"), "{err}");
    let (code, err) = run(&["--bind", "0.0.0.0:0", "--public"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--password"), "{err}");
    let (code, err) = run(&["--bind", "0.0.0.0:0", "--public", "--password", "short"]);
    assert_eq!(code, Some(2), "{err}");
    std::fs::remove_dir_all(&data).unwrap();
}
