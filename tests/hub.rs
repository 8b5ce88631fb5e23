//! Hugging Face ids through the command line, against a stand-in hub on 127.0.0.1
//! (`HF_ENDPOINT`; the real hub cannot be reached here) serving the tiny pipeline from the
//! fixtures, plus files moslora must not fetch (a pickle, an fp16 variant, a root-level single
//! file, a folder model_index.json does not name, a README):
//! - huggingface_hub downloads it into cache A; moslora, offline, renders from cache A
//!   exactly what it renders from the folder, and sends no request;
//! - moslora downloads it into an empty cache B (only what it reads, in huggingface_hub's
//!   layout); diffusers, offline, loads it from cache B by id and renders exactly what it
//!   renders from the folder; a second run sends no request;
//! - a download killed halfway resumes with a Range request and the same bytes, and so does
//!   one huggingface_hub left (`.incomplete`);
//! - encoders (`score --clip ID --dino ID`) score as their folders do;
//! - not found, revision not found, gated (no token, a refused token; and the token file
//!   letting it through), offline with nothing cached, a refused connection and a
//!   pickle-only repository each end with their own message and exit code.

mod common;
mod hub_support;
mod metrics_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{fixtures, python, repo, scratch};
use hub_support::{Hub, Repo};

const ID: &str = "tiny/sdxl";

/// Files the stand-in serves beside the pipeline that moslora must never download.
const DECOYS: &[(&str, &[u8])] = &[
    ("README.md", b"# tiny sdxl\n"),
    (".gitattributes", b"*.safetensors filter=lfs\n"),
    ("unet/diffusion_pytorch_model.bin", b"PK\x03\x04 a pickle"),
    (
        "unet/diffusion_pytorch_model.fp16.safetensors",
        b"not this variant",
    ),
    ("sd_xl_tiny.safetensors", b"a single-file copy"),
    ("vae_1_0/config.json", b"{}"),
    (
        "vae_1_0/diffusion_pytorch_model.safetensors",
        b"an unnamed folder",
    ),
    ("text_encoder/model.onnx", b"onnx"),
];

fn tiny() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

fn pipeline_repo(id: &str) -> Repo {
    Repo::from_dir(id, &tiny(), DECOYS)
}

/// `moslora ARGS` with the Hugging Face variables of `env` only (the caller's HF_TOKEN,
/// HF_HOME and cache never leak in).
fn moslora(env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moslora"));
    for v in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "XDG_CACHE_HOME",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HUB_OFFLINE", "0");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(args).output().unwrap();
    println!(
        "moslora {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `moslora generate` of the tiny pipeline (2 steps, 64 px) into `out`.
fn generate(env: &[(&str, &Path)], model: &str, out: &Path) -> Output {
    moslora(
        env,
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "a photo of sks dog",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The render from the fixture folder itself, the reference for every cache (made once).
fn folder_render() -> &'static [u8] {
    static PNG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PNG.get_or_init(|| {
        let out = scratch("folder").join("folder.png");
        let o = generate(&[], tiny().to_str().unwrap(), &out);
        assert!(o.status.success());
        std::fs::read(out).unwrap()
    })
}

/// `tests/reference/hub_cache.py ARGS` against the stand-in.
fn hub_cache_py(hub: &Hub, offline: bool, home: &Path, args: &[&str]) {
    let out = Command::new(python())
        .arg(repo().join("tests/reference/hub_cache.py"))
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("hub_cache.py {}:\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "hub_cache.py {args:?} failed:\n{text}"
    );
}

/// The files moslora reads of the tiny pipeline: everything of the fixture folder.
fn pipeline_files() -> Vec<String> {
    let r = pipeline_repo(ID);
    r.files
        .keys()
        .filter(|n| !DECOYS.iter().any(|(d, _)| d == n))
        .cloned()
        .collect()
}

#[test]
fn a_cache_huggingface_hub_made_renders_offline_as_the_folder_does() {
    let dir = scratch("cache-a");
    let hub = Hub::start(vec![(ID, pipeline_repo(ID))]);
    let cache = dir.join("cache-a");
    let home = dir.join("home");
    hub_cache_py(
        &hub,
        false,
        &home,
        &["download", ID, cache.to_str().unwrap()],
    );
    hub.take_log();
    let reference = folder_render();
    let url = PathBuf::from(&hub.url);
    let env = [
        ("HF_ENDPOINT", url.as_path()),
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HOME", home.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let out = dir.join("cache-a.png");
    assert!(generate(&env, ID, &out).status.success());
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "rendering from the huggingface_hub cache differs from rendering the folder"
    );
    // By commit too.
    let commit = pipeline_repo(ID).commit;
    let out = dir.join("cache-a-commit.png");
    assert!(generate(&env, &format!("{ID}@{commit}"), &out)
        .status
        .success());
    assert!(std::fs::read(&out).unwrap() == reference);
    let log = hub.take_log();
    assert!(log.is_empty(), "offline, yet it asked the hub: {log:?}");
}

#[test]
fn moslora_downloads_into_a_cache_diffusers_loads() {
    let dir = scratch("cache-b");
    let hub = Hub::start(vec![(ID, pipeline_repo(ID))]);
    let cache = dir.join("cache-b");
    let home = dir.join("home");
    let reference = folder_render();
    let url = PathBuf::from(&hub.url);
    let env = [
        ("HF_ENDPOINT", url.as_path()),
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HOME", home.as_path()),
    ];
    let out = dir.join("cache-b.png");
    let started = Instant::now();
    assert!(generate(&env, ID, &out).status.success());
    println!(
        "download and render: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(std::fs::read(&out).unwrap() == reference);

    // Only what moslora reads, each once.
    let mut got = Hub::downloads(&hub.take_log());
    got.sort();
    let mut want = pipeline_files();
    want.sort();
    assert_eq!(got, want, "downloaded files");

    // huggingface_hub's layout: refs/main, snapshot links into blobs named by etag.
    let r = pipeline_repo(ID);
    let folder = cache.join("models--tiny--sdxl");
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main")).unwrap(),
        r.commit
    );
    assert!(!folder.join("refs").join(&r.commit).exists());
    let snap = folder.join("snapshots").join(&r.commit);
    let unet = snap.join("unet/diffusion_pytorch_model.safetensors");
    let link = std::fs::read_link(&unet).unwrap();
    assert!(link.starts_with("../../../blobs"), "{}", link.display());
    let blob = std::fs::canonicalize(&unet).unwrap();
    let sha: String = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(std::fs::read(&blob).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(blob.file_name().unwrap().to_str().unwrap(), sha);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(tiny().join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    );
    let leftovers: Vec<String> = std::fs::read_dir(folder.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(leftovers.is_empty(), "left in blobs/: {leftovers:?}");

    // Cached: the next run asks the hub nothing.
    let out2 = dir.join("cache-b-again.png");
    assert!(generate(&env, ID, &out2).status.success());
    assert!(std::fs::read(&out2).unwrap() == reference);
    let log = hub.take_log();
    assert!(
        log.is_empty(),
        "a complete cache, yet it asked the hub: {log:?}"
    );

    // diffusers, offline, by id from cache B: the same pipeline, the same latents.
    hub_cache_py(
        &hub,
        true,
        &home,
        &[
            "diffusers",
            ID,
            cache.to_str().unwrap(),
            tiny().to_str().unwrap(),
        ],
    );
    assert!(hub.take_log().is_empty(), "diffusers offline asked the hub");
}

#[test]
fn a_killed_download_resumes_where_it_stopped() {
    let dir = scratch("resume");
    let hub = Hub::start(vec![(ID, pipeline_repo(ID))]);
    let cache = dir.join("cache");
    let home = dir.join("home");
    let url = PathBuf::from(&hub.url);
    let env = [
        ("HF_ENDPOINT", url.as_path()),
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HOME", home.as_path()),
    ];
    let big = "unet/diffusion_pytorch_model.safetensors";
    let bytes = std::fs::read(tiny().join(big)).unwrap();
    let half = bytes.len() / 2;
    hub.stall(Some(big));
    let out = dir.join("resumed.png");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["generate", "--model", ID, "--prompt", "a photo of sks dog"])
        .args([
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
        ])
        .arg("--out")
        .arg(&out)
        .env_remove("HF_TOKEN")
        .env("HF_HUB_OFFLINE", "0")
        .envs(env)
        .stdout(std::fs::File::create(dir.join("killed.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("killed.err")).unwrap())
        .spawn()
        .unwrap();
    // Wait for the first half to be on disk, then kill the download.
    let blobs = cache.join("models--tiny--sdxl/blobs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let part = std::fs::read_dir(&blobs).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "part"))
        });
        if let Some(p) = part {
            if std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) == half as u64 {
                break p;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "moslora ended before the stall"
        );
        assert!(Instant::now() < deadline, "the first half never arrived");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    println!(
        "killed with {} of {} bytes in {}",
        half,
        bytes.len(),
        partial.display()
    );
    hub.stall(None);
    let before: Vec<String> = Hub::downloads(&hub.take_log())
        .into_iter()
        .filter(|f| f != big)
        .collect();

    let o = generate(&env, ID, &out);
    assert!(o.status.success());
    let log = hub.take_log();
    let ranges: Vec<&Option<String>> = log
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(big))
        .map(|s| &s.range)
        .collect();
    let resumed = format!("bytes={half}-");
    assert!(
        ranges
            .iter()
            .any(|r| r.as_deref() == Some(resumed.as_str())),
        "no resuming Range request for {big}: {ranges:?}"
    );
    // Nothing downloaded twice: the files done before the kill are not asked for again,
    // the rest are.
    let mut again = Hub::downloads(&log);
    again.sort();
    let mut rest: Vec<String> = pipeline_files()
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    rest.sort();
    assert!(rest.contains(&big.to_string()));
    assert_eq!(again, rest, "downloaded after the kill");
    let blob = std::fs::canonicalize(
        cache
            .join("models--tiny--sdxl/snapshots")
            .join(pipeline_repo(ID).commit)
            .join(big),
    )
    .unwrap();
    assert!(
        std::fs::read(blob).unwrap() == bytes,
        "the resumed file differs"
    );
    assert!(std::fs::read(&out).unwrap() == folder_render());

    // What huggingface_hub leaves when it is killed (`blobs/<etag>.incomplete`) resumes too.
    let cache2 = dir.join("cache-python");
    let sha: String = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(&bytes);
        d.iter().map(|b| format!("{b:02x}")).collect()
    };
    let blobs2 = cache2.join("models--tiny--sdxl/blobs");
    std::fs::create_dir_all(&blobs2).unwrap();
    let third = bytes.len() / 3;
    std::fs::write(blobs2.join(format!("{sha}.incomplete")), &bytes[..third]).unwrap();
    let env2 = [env[0], ("HF_HUB_CACHE", cache2.as_path()), env[2]];
    let out2 = dir.join("resumed-python.png");
    assert!(generate(&env2, ID, &out2).status.success());
    let resumed = format!("bytes={third}-");
    assert!(
        hub.take_log()
            .iter()
            .any(|s| s.path.ends_with(big) && s.range.as_deref() == Some(resumed.as_str())),
        "huggingface_hub's partial file was not resumed"
    );
    assert!(std::fs::read(blobs2.join(&sha)).unwrap() == bytes);
    assert!(std::fs::read(&out2).unwrap() == folder_render());
}

#[test]
fn encoder_ids_score_as_their_folders() {
    let dir = scratch("encoders");
    let fx = metrics_support::fx();
    let pickles: &[(&str, &[u8])] = &[
        ("pytorch_model.bin", b"pickle"),
        ("flax_model.msgpack", b"flax"),
    ];
    let hub = Hub::start(vec![
        (
            "tiny/clip",
            Repo::from_dir("tiny/clip", &fx.join("tiny-clip"), pickles),
        ),
        (
            "tiny/dino",
            Repo::from_dir("tiny/dino", &fx.join("tiny-dino"), pickles),
        ),
    ]);
    let cache = dir.join("cache");
    let url = PathBuf::from(&hub.url);
    let env = [
        ("HF_ENDPOINT", url.as_path()),
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HOME", dir.as_path()),
    ];
    let scores = |name: &str, clip: &str, dino: &str| {
        let renders = dir.join(name);
        metrics_support::renders_folder(&renders);
        let o = moslora(
            &env,
            &[
                "score",
                renders.to_str().unwrap(),
                "--clip",
                clip,
                "--dino",
                dino,
            ],
        );
        assert!(o.status.success());
        std::fs::read_to_string(renders.join("scores.csv")).unwrap()
    };
    let by_id = scores("by-id", "tiny/clip", "tiny/dino");
    let mut got = Hub::downloads(&hub.take_log());
    got.sort();
    // CLIP's five files and DINO's two, no pickle or Flax file.
    assert_eq!(
        got,
        [
            "config.json",
            "config.json",
            "model.safetensors",
            "model.safetensors",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    );
    let by_folder = scores(
        "by-folder",
        fx.join("tiny-clip").to_str().unwrap(),
        fx.join("tiny-dino").to_str().unwrap(),
    );
    assert_eq!(by_id, by_folder);
}

#[test]
fn each_failure_says_what_to_do() {
    let dir = scratch("failures");
    let mut gated = pipeline_repo("gated/sdxl");
    gated.token = Some("hf_let_me_in".into());
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let pickles_only = Repo::from_dir(
        "pickles/sdxl",
        &empty,
        &[
            ("model_index.json", br#"{"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#),
            ("unet/config.json", b"{}"),
            ("unet/diffusion_pytorch_model.bin", b"pickle"),
        ],
    );
    let hub = Hub::start(vec![
        (ID, pipeline_repo(ID)),
        ("gated/sdxl", gated),
        ("pickles/sdxl", pickles_only),
    ]);
    let cache = dir.join("cache");
    let home = dir.join("home");
    let url = PathBuf::from(&hub.url);
    let env = [
        ("HF_ENDPOINT", url.as_path()),
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HOME", home.as_path()),
    ];
    let out = dir.join("x.png");
    let fails = |env: &[(&str, &Path)], model: &str, code: i32, needles: &[&str]| {
        let o = generate(env, model, &out);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{model}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        for n in needles {
            assert!(lines[0].contains(n), "{n:?} missing from: {err}");
        }
        assert!(!out.exists());
    };
    fails(
        &env,
        "nobody/nothing",
        2,
        &[
            "`nobody/nothing`",
            "not found on",
            &hub.url,
            "no such repository",
        ],
    );
    fails(
        &env,
        "tiny/sdxl@v9",
        2,
        &["`tiny/sdxl@v9`", "no revision `v9`"],
    );
    let page = format!("{}/gated/sdxl", hub.url);
    fails(
        &env,
        "gated/sdxl",
        8,
        &[
            "`gated/sdxl` is gated",
            "accept its licence on",
            &page,
            "HF_TOKEN",
        ],
    );
    let bad = [env[0], env[1], env[2], ("HF_TOKEN", Path::new("hf_wrong"))];
    fails(&bad, "gated/sdxl", 8, &["was refused", &page]);
    fails(
        &env,
        "pickles/sdxl",
        2,
        &[
            "no .safetensors",
            "unet/diffusion_pytorch_model.bin",
            "never downloads pickled",
        ],
    );
    // Offline with an empty cache: not one request.
    hub.take_log();
    let offline = [env[0], env[1], env[2], ("HF_HUB_OFFLINE", Path::new("1"))];
    fails(
        &offline,
        ID,
        7,
        &[
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE",
            "hf download tiny/sdxl --include",
        ],
    );
    assert!(hub.take_log().is_empty());
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let refused = [(env[0].0, Path::new(closed.as_str())), env[1], env[2]];
    fails(
        &refused,
        ID,
        7,
        &[
            "could not download model `tiny/sdxl` from",
            &closed,
            "hf download tiny/sdxl --include",
        ],
    );
    // The token file under HF_HOME opens the gated repository (and the cache defaults to
    // HF_HOME/hub).
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), "hf_let_me_in\n").unwrap();
    let o = generate(&[env[0], ("HF_HOME", home.as_path())], "gated/sdxl", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(home.join("hub/models--gated--sdxl/refs/main").is_file());
}
