//! A full disk, for real: the outputs live on a small tmpfs that is then filled up, and each
//! writer (checkpoint, adapter, render, grid, manifest, study kit) must fail with one line
//! saying so (exit 5), leave the previous file as it was, and leave no temporary behind.
//!
//! Where mounting is not allowed, the same writers meet a file-size limit instead
//! (RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG); the test says which route
//! it took (`MOSLORA_TEST_NO_MOUNT=1` forces the second). One test in this binary, because the limit is the whole process's.

mod common;
mod run_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{scratch, tensors, Failures};
use moslora::render::manifest::Manifest;
use run_support::{leftovers, moslora, write_run};

/// Unmounts on drop, so a failing test does not leave the tmpfs mounted.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mount a tmpfs of `size` on `dir`; None where this machine does not allow it.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(dir.to_path_buf()))
}

/// Fill the file system holding `dir` until a write fails; returns the filler's size.
fn fill(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let mut total = 0;
    for chunk in [1 << 16, 4096, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() && f.flush().is_ok() {
            total += chunk as u64;
        }
    }
    total
}

/// Lower this process's file-size limit (children inherit it) to `bytes`; writes past it
/// fail with EFBIG instead of killing the writer.
fn limit_file_size(bytes: u64) -> libc::rlimit {
    // SAFETY: plain libc calls on this process; `old` is written by getrlimit before use.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
        old
    }
}

/// Every file (not the lock, not the filler) under `dir`, with its bytes.
fn snapshot(dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            snapshot(&p, into);
        } else if !p.ends_with(".moslora.lock") && !p.ends_with("filler") {
            into.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn a_full_disk_is_one_line_keeps_the_previous_files_and_leaves_no_temporaries() {
    let root = scratch("disk");
    let disk = root.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // MOSLORA_TEST_NO_MOUNT=1 takes the file-size-limit route even where mounting works, to
    // check that route.
    let mounted = match std::env::var_os("MOSLORA_TEST_NO_MOUNT") {
        Some(_) => None,
        None => mount_tmpfs(&disk, "8m"),
    };
    let route = if mounted.is_some() {
        "an 8 MB tmpfs, filled up (ENOSPC)"
    } else {
        "no mount allowed here: a 1 KB file-size limit (RLIMIT_FSIZE, EFBIG)"
    };
    println!("full-disk route: {route}");
    let clock = std::time::Instant::now();

    // Everything written once with room to spare: the "previous good files".
    let run = write_run(&disk, 2, 0);
    let run_s = run.to_str().unwrap().to_string();
    let out = disk.join("out");
    let adapter = out.join("lora/adapter.safetensors");
    let adapter_s = format!("lora={}", adapter.display());
    let study = disk.join("study");
    let render_args = |seeds: &str| -> Vec<String> {
        [
            "render",
            &run_s,
            "--only-adapters",
            "--adapter",
            &adapter_s,
            "--seeds",
            seeds,
        ]
        .map(String::from)
        .to_vec()
    };
    let study_args: Vec<String> = ["study", "make", "--renders"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            out.join("renders").display().to_string(),
            "--a".into(),
            "base".into(),
            "--b".into(),
            "lora".into(),
            "--seed".into(),
            "1".into(),
            "--out".into(),
            study.display().to_string(),
            "--force".into(),
        ])
        .collect();
    let as_str = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    for args in [
        vec![
            "train".to_string(),
            run_s.clone(),
            "--adapter".into(),
            "lora".into(),
        ],
        render_args("0"),
        study_args.clone(),
    ] {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = moslora(&argv);
        assert_eq!(code, Some(0), "{}: {err}", as_str(&args));
    }
    let mut before = BTreeMap::new();
    snapshot(&disk, &mut before);
    let used: u64 = before.values().map(|b| b.len() as u64).sum();
    println!(
        "written with room: {} files, {:.2} MB",
        before.len(),
        used as f64 / 1e6
    );

    // No more room.
    let (reason, advice, old_limit) = if mounted.is_some() {
        let filler = fill(&disk);
        println!("filler: {:.2} MB", filler as f64 / 1e6);
        ("no space left on device", "free some space", None)
    } else {
        (
            "file size limit reached",
            "raise the file-size limit",
            Some(limit_file_size(1024)),
        )
    };

    let mut failures = Failures::new();
    let check_after = |case: &str, failures: &mut Failures| {
        let mut now = BTreeMap::new();
        snapshot(&disk, &mut now);
        for (p, bytes) in &before {
            failures.check(case, now.get(p) == Some(bytes), || {
                format!("{} changed or vanished", p.display())
            });
        }
        let left = leftovers(&disk);
        failures.check(case, left.is_empty(), || format!("left behind: {left:?}"));
    };
    let cli_cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "train --resume (final checkpoint, with the adapter inside it)",
            vec![
                "train".into(),
                run_s.clone(),
                "--adapter".into(),
                "lora".into(),
                "--resume".into(),
            ],
            "lora/checkpoint",
        ),
        (
            "render of a new seed (a PNG)",
            render_args("0,1"),
            "images/",
        ),
        (
            "render with every image kept (a grid)",
            render_args("0"),
            "grids/",
        ),
        (
            "study make --force (the study kit)",
            study_args.clone(),
            "study",
        ),
    ];
    for (case, args, names) in &cli_cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = moslora(&argv);
        println!(
            "[{:.1?}] {case}: exit {code:?}: {}",
            clock.elapsed(),
            err.trim()
        );
        failures.check(case, code == Some(5), || format!("exit {code:?}: {err}"));
        let lines: Vec<&str> = err.trim().lines().filter(|l| l.contains("error")).collect();
        failures.check(case, lines.len() == 1, || {
            format!("not one error line: {err}")
        });
        failures.contains_all(case, &err, &[reason, *names, advice]);
        check_after(case, &mut failures);
    }

    // The writers a command reaches only later, called directly on the full disk.
    let manifest_dir = out.join("renders");
    let m = Manifest::read(&manifest_dir).unwrap();
    let e = m.write(&manifest_dir).unwrap_err();
    println!("manifest write: {e}");
    failures.check(
        "manifest",
        matches!(e, moslora::Error::NoSpace { .. }),
        || e.to_string(),
    );
    failures.contains_all("manifest", &e.to_string(), &[reason, "manifest.json"]);
    check_after("manifest", &mut failures);

    let t: Vec<(String, tch::Tensor)> = tensors(&adapter).into_iter().collect();
    let e = moslora::sdxl::weights::save_safetensors(&t, None, &adapter).unwrap_err();
    println!("adapter write: {e}");
    failures.check(
        "adapter",
        matches!(e, moslora::Error::NoSpace { .. }),
        || e.to_string(),
    );
    failures.contains_all("adapter", &e.to_string(), &[reason, "adapter.safetensors"]);
    check_after("adapter", &mut failures);

    // Room again: the same render goes through.
    match old_limit {
        Some(old) => unsafe {
            // SAFETY: restores the limit read before.
            libc::setrlimit(libc::RLIMIT_FSIZE, &old);
        },
        None => std::fs::remove_file(disk.join("filler")).unwrap(),
    }
    let args = render_args("0,1");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = moslora(&argv);
    failures.check("after freeing space", code == Some(0), || err.clone());
    failures.assert_none();
    drop(mounted);
    std::fs::remove_dir_all(&root).unwrap();
}
