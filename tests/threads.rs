//! Thread settings as a user meets them: the command line, started with no OpenMP settings,
//! restarts itself with OpenMP's passive wait policy when it will run more than one thread
//! (libgomp reads the policy only when it is loaded), does not when one thread does the work
//! (the tiny model: `threads: auto`), and refuses an unreadable MOSLORA_THREADS.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{scratch, tiny_model};

/// `moslora generate` on the tiny model (64 px, one step) with no OpenMP settings but
/// libgomp's report of them (OMP_DISPLAY_ENV=verbose: one report each time it is loaded).
fn generate(out: &Path, threads: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moslora"));
    cmd.args(["generate", "--model"])
        .arg(tiny_model())
        .args(["--prompt", "a photo of sks toy", "--steps", "1"])
        .args(["--width", "64", "--height", "64", "--out"])
        .arg(out)
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("OMP_NUM_THREADS")
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("MOSLORA_THREADS")
        .env("OMP_DISPLAY_ENV", "verbose");
    if let Some(t) = threads {
        cmd.env("MOSLORA_THREADS", t);
    }
    cmd.output().unwrap()
}

/// libgomp's spin counts as each load of it reported them: 300000 is its default (the
/// policy unset), 0 the passive policy.
fn spin_counts(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GOMP_SPINCOUNT = "))
        .map(|v| v.trim_matches('\'').to_string())
        .collect()
}

#[test]
fn more_than_one_thread_restarts_with_the_passive_wait_policy() {
    let dir = scratch("passive");
    let out = dir.join("two.png");
    let o = generate(&out, Some("2"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file(), "the restarted program wrote the picture");
    // Loaded twice: first with the default spinning, then, restarted, passive.
    assert_eq!(
        spin_counts(&o),
        ["300000", "0"],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn one_thread_on_small_work_needs_no_restart() {
    let dir = scratch("one");
    let out = dir.join("auto.png");
    let o = generate(&out, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
    // `auto` gives the tiny model one thread: no team, nothing spins, no second start.
    assert_eq!(
        spin_counts(&o),
        ["300000"],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn an_unreadable_thread_count_is_refused_by_name() {
    let dir = scratch("bad");
    let o = generate(&dir.join("bad.png"), Some("lots"));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("MOSLORA_THREADS") && err.contains("expected `auto` or a whole number"),
        "{err}"
    );
    assert!(!dir.join("bad.png").exists());
}
