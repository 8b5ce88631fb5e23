//! The phases before training (loading the model, caching latents) show as stages and stop
//! on Ctrl-C at once: a real `moslora train` caching latents at 512 pixels on the toy model
//! (each VAE encode takes a while there) gets SIGINT and must exit 130 within 2 seconds,
//! leaving no adapter, checkpoint or temporary file.

mod common;
mod run_support;

use std::time::{Duration, Instant};

use common::{repo, scratch};
use run_support::{leftovers, Running};

#[test]
fn sigint_while_caching_latents_stops_within_two_seconds() {
    let root = scratch("caching");
    let run = root.join("run.yaml");
    std::fs::write(
        &run,
        format!(
            "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 10\n  \
             resolution: 512\n  batch_size: 1\n  crops_per_image: 4\n",
            repo().join("assets/toy-model").display(),
            root.join("out").display(),
            repo().join("assets/subject").display()
        ),
    )
    .unwrap();
    let stderr = root.join("stderr.txt");
    let mut p = Running::start(
        &["train", run.to_str().unwrap(), "--adapter", "lora"],
        &stderr,
    );
    // Where stderr is no terminal, each stage names itself as it starts.
    let caching = p.wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(&stderr).is_ok_and(|e| e.contains("cache: 40 latents"))
    });
    assert!(caching, "never reached the latent cache: {}", p.finish().1);
    // Well inside the first encodes: 40 of them take much longer than this.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        p.running(),
        "caching ended before the signal: {}",
        p.finish().1
    );
    let sent = Instant::now();
    p.signal("INT");
    p.wait_for(Duration::from_secs(60), || false);
    let took = sent.elapsed();
    let (status, err) = p.finish();
    println!("{err}\nSIGINT while caching: exit {status:?} after {took:?}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        took <= Duration::from_secs(2),
        "took {took:?} to stop: {err}"
    );
    assert!(err.contains("interrupted"), "{err}");
    let out = root.join("out");
    for made in [
        "lora/adapter.safetensors",
        "lora/checkpoint",
        "lora/loss.csv",
    ] {
        assert!(!out.join(made).exists(), "{made} was written");
    }
    let left = leftovers(&root);
    assert!(left.is_empty(), "left behind: {left:?}");
}
