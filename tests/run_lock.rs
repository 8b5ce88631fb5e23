//! Two runs on one output folder: the second `train` or `compare` stops at once with one line
//! naming the running process; a SIGKILLed holder's lock does not block the next run; and a
//! process reading a run's checkpoint while it is being rewritten never sees half a file.

mod common;
mod run_support;

use std::time::{Duration, Instant};

use common::{scratch, tensors};
use run_support::{checkpoint_step, error_lines, moslora, write_run, Running};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_second_run_on_the_same_folder_is_refused_and_a_dead_runs_lock_is_not_in_the_way() {
    let root = scratch("two-runs");
    // Long enough to outlive the checks below; it is killed, not waited for.
    let run = write_run(&root, 2000, 1);
    let run_s = run.to_str().unwrap();
    let mut first = Running::start(
        &["train", run_s, "--adapter", "lora"],
        &root.join("first.txt"),
    );
    let ckpt = root.join("out/lora/checkpoint");
    assert!(
        first.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some()),
        "the first run ended early"
    );
    let holder = format!("pid {}", first.pid());

    for (case, args) in [
        ("train", vec!["train", run_s, "--adapter", "moslora"]),
        ("compare", vec!["compare", run_s]),
    ] {
        let started = Instant::now();
        let (code, err) = moslora(&args);
        let took = started.elapsed();
        println!(
            "second {case} while train runs: exit {code:?} in {took:.2?}: {}",
            err.trim()
        );
        assert_eq!(code, Some(6), "{case}: {err}");
        let errors = error_lines(&err);
        assert_eq!(errors.len(), 1, "{case}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{case}: more than one line: {err}"
        );
        for part in [&holder, "moslora train", "in use by another run", "out"] {
            assert!(errors[0].contains(part), "{case}: {part:?} missing: {err}");
        }
        // "At once": the one line above is all it printed, so it stopped before reading the
        // photos (which prints "N photos in ...") or loading the model.
        assert!(!err.contains("photos in"), "{case} started working: {err}");
    }

    // While the holder rewrites its checkpoint every step, a reader only ever finds whole
    // files (or, for a moment during the swap, none).
    let mut reads = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if let Ok(text) = std::fs::read_to_string(ckpt.join("state.json")) {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("half-written state.json ({e}): {text}"));
            reads += 1;
        }
        let adapter = ckpt.join("adapter.safetensors");
        if let Ok(bytes) = std::fs::read(&adapter) {
            safetensors::SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("half-written {}: {e}", adapter.display()));
            reads += 1;
        }
    }
    println!("{reads} whole reads of the checkpoint while it was being rewritten");
    assert!(reads > 0);

    // SIGKILL: the lock file stays behind with the dead run's text, yet the next run goes on.
    first.signal("KILL");
    first.finish();
    let lock = std::fs::read_to_string(root.join("out/.moslora.lock")).unwrap();
    assert!(lock.contains(&holder), "{lock}");
    let short = write_run(&root.join("short"), 2, 0);
    // The same output folder as the killed run.
    let yaml = std::fs::read_to_string(&short).unwrap().replace(
        &root.join("short/out").display().to_string(),
        &root.join("out").display().to_string(),
    );
    std::fs::write(&short, yaml).unwrap();
    let started = Instant::now();
    let (code, err) = moslora(&["train", short.to_str().unwrap(), "--adapter", "moslora"]);
    println!(
        "train after the holder was SIGKILLed: exit {code:?} in {:.2?}",
        started.elapsed()
    );
    assert_eq!(code, Some(0), "{err}");
    tensors(&root.join("out/moslora/adapter.safetensors"));
    std::fs::remove_dir_all(&root).unwrap();
}
