//! Real signals to real `moslora` processes: SIGTERM stops training with a checkpoint and
//! `--resume` ends on the uninterrupted run's bits; SIGKILL at seeded-random moments (during
//! checkpoint writes too) always leaves a checkpoint that a resumed run continues from, to the
//! same bits; a stopped or killed render or compare leaves no truncated PNG, and running it
//! again renders only what is missing.

mod common;
mod run_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{scratch, tensors};
use rand::{Rng, SeedableRng};
use run_support::{
    checkpoint_step, error_lines, inode, leftovers, moslora, pngs, write_run, Running, PROMPTS,
};

const STEPS: u64 = 12;
const LIMIT: Duration = Duration::from_secs(120);

/// The uninterrupted LoRA run every stopped run is held against (same settings: a checkpoint
/// every step, so that kills land in checkpoint writes often).
fn whole_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = scratch("whole");
        let run = write_run(&root, STEPS, 1);
        let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
        assert_eq!(code, Some(0), "{err}");
        root.join("out/lora")
    })
}

fn assert_same_adapter(a: &Path, b: &Path) {
    let (x, y) = (tensors(a), tensors(b));
    assert_eq!(x.len(), y.len(), "{} vs {}", a.display(), b.display());
    for (name, t) in &x {
        assert!(t.equal(&y[name]), "{name} differs: {}", b.display());
    }
}

/// Resume `run` to the end and check it ends on the whole run's adapter and loss log, with no
/// temporaries left.
fn resume_to_the_end_and_compare(run: &Path, out: &Path, from: u64) {
    let (code, err) = moslora(&[
        "train",
        run.to_str().unwrap(),
        "--adapter",
        "lora",
        "--resume",
    ]);
    assert_eq!(code, Some(0), "{err}");
    if from > 0 {
        assert!(err.contains(&format!("resuming at step {from}")), "{err}");
    }
    let whole = whole_run();
    assert_same_adapter(
        &whole.join("adapter.safetensors"),
        &out.join("adapter.safetensors"),
    );
    assert_eq!(
        std::fs::read_to_string(whole.join("loss.csv")).unwrap(),
        std::fs::read_to_string(out.join("loss.csv")).unwrap(),
        "loss log"
    );
    let left = leftovers(out.parent().unwrap());
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sigterm_saves_a_checkpoint_and_resume_gives_the_same_bits() {
    whole_run();
    let root = scratch("sigterm");
    let run = write_run(&root, STEPS, 1);
    let out = root.join("out/lora");
    let mut p = Running::start(
        &["train", run.to_str().unwrap(), "--adapter", "lora"],
        &root.join("stderr.txt"),
    );
    let ckpt = out.join("checkpoint");
    assert!(
        p.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some_and(|s| s >= 2)),
        "the run ended before it could be stopped"
    );
    // What a batch scheduler sends before it kills.
    p.signal("TERM");
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "exit status after SIGTERM: {err}");
    assert!(err.contains("interrupted: saving a checkpoint"), "{err}");
    let stopped = checkpoint_step(&ckpt).expect("a checkpoint after SIGTERM");
    println!("SIGTERM stopped the run at step {stopped} of {STEPS}");
    assert!((2..STEPS).contains(&stopped), "stopped at {stopped}");
    assert!(err.contains(&format!("stopped at step {stopped}")), "{err}");
    assert!(!out.join("adapter.safetensors").exists());
    resume_to_the_end_and_compare(&run, &out, stopped);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Where a kill is aimed.
#[derive(Clone, Copy, Debug)]
enum Aim {
    /// A seeded-random moment within one step-and-checkpoint period.
    Anywhere,
    /// As soon as a checkpoint's hidden temporary folder appears: inside its write.
    CheckpointWrite,
    /// As soon as the final adapter's temporary file appears: inside its write.
    AdapterWrite,
}

/// Does any entry of `dir` start with `prefix`?
fn has_entry(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|r| {
        r.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    })
}

#[test]
fn sigkill_at_random_moments_leaves_a_checkpoint_that_resumes_to_the_same_bits() {
    whole_run();
    let root = scratch("sigkill");
    let run = write_run(&root, STEPS, 1);
    let out = root.join("out/lora");
    let ckpt = out.join("checkpoint");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20_260_501);
    let mut last = 0;
    let aims = [
        Aim::Anywhere,
        Aim::CheckpointWrite,
        Aim::Anywhere,
        Aim::CheckpointWrite,
        Aim::AdapterWrite,
    ];
    for (round, aim) in aims.into_iter().enumerate() {
        // A kill between the two renames of a checkpoint swap leaves no `checkpoint/`, only the
        // previous one set aside, and maybe the new one half-written: that window is too narrow
        // to hit by timing, so it is laid out as such a kill leaves it (a pid that cannot run).
        if round == 4 && ckpt.join("state.json").exists() && last < STEPS {
            let dead = 0x7fff_fff0;
            std::fs::rename(&ckpt, out.join(format!(".checkpoint.old-{dead}"))).unwrap();
            let half = out.join(format!(".checkpoint.tmp-{dead}"));
            std::fs::create_dir_all(&half).unwrap();
            std::fs::write(half.join("adapter.safetensors"), b"\x10\0\0\0").unwrap();
            println!("laid out a kill between the renames of the checkpoint at step {last}");
        }
        let mut p = Running::start(
            &[
                "train",
                run.to_str().unwrap(),
                "--adapter",
                "lora",
                "--resume",
            ],
            &root.join(format!("stderr-{round}.txt")),
        );
        // Past the first checkpoint of this run, so the kill lands in training, not start-up.
        let training = p.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some_and(|s| s > last));
        let moment = match aim {
            Aim::Anywhere => {
                // One period (a step and its checkpoint), then a random point in the next.
                let from = checkpoint_step(&ckpt).unwrap_or(last);
                let t = std::time::Instant::now();
                p.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some_and(|s| s > from));
                let period = t.elapsed().as_millis().max(1) as u64;
                let delay = rng.random_range(0..period);
                std::thread::sleep(Duration::from_millis(delay));
                format!("{delay} ms into a {period} ms step")
            }
            Aim::CheckpointWrite | Aim::AdapterWrite => {
                let (dir, prefix) = match aim {
                    Aim::AdapterWrite => (out.clone(), ".adapter.tmp-"),
                    _ => (out.clone(), ".checkpoint.tmp-"),
                };
                let t = std::time::Instant::now();
                while p.running() && !has_entry(&dir, prefix) && t.elapsed() < LIMIT {
                    std::thread::yield_now();
                }
                format!("on seeing {prefix}*")
            }
        };
        // A run that ended (reaped by `running`) has no pid to kill; one that ends after this
        // check stays a zombie until `finish`, which the kill still reaches.
        let finished = !p.running();
        if !finished {
            p.signal("KILL");
        }
        let (_, err) = p.finish();
        if last > 0 {
            assert!(err.contains(&format!("resuming at step {last}")), "{err}");
        }
        let left = leftovers(&root.join("out"));
        // The checkpoint as the next run will find it: in place, or set aside by a kill
        // between the two renames of a checkpoint swap (the next run puts it back).
        let readable = if ckpt.join("state.json").exists() {
            ckpt.clone()
        } else {
            left.iter()
                .find(|p| p.to_string_lossy().contains(".checkpoint.old-"))
                .cloned()
                .unwrap_or_else(|| panic!("round {round}: no checkpoint left: {left:?}"))
        };
        let step = checkpoint_step(&readable).expect("state.json readable");
        tensors(&readable.join("adapter.safetensors"));
        tensors(&readable.join("optimizer.safetensors"));
        println!(
            "kill {round} ({aim:?}) {moment}{}: checkpoint at step {step} in {}; left behind: {:?}",
            if finished {
                " (the run had already ended)"
            } else {
                ""
            },
            readable.file_name().unwrap().to_string_lossy(),
            left.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        );
        assert!(training || finished, "round {round}: the run never trained");
        assert!(
            step >= last,
            "round {round}: the checkpoint went back from {last} to {step}"
        );
        last = step;
        if out.join("adapter.safetensors").exists() {
            // Killed after the final adapter was in place: it must be whole.
            tensors(&out.join("adapter.safetensors"));
        }
    }

    resume_to_the_end_and_compare(&run, &out, last);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Check a render folder after a stop: every PNG decodes whole, and what is left to find.
fn check_pngs(case: &str, images: &Path) -> Vec<PathBuf> {
    let found = pngs(images);
    for p in &found {
        image::open(p).unwrap_or_else(|e| panic!("{case}: {} is damaged: {e}", p.display()));
    }
    found
}

#[test]
fn a_stopped_or_killed_render_keeps_whole_pngs_and_the_rerun_renders_only_the_rest() {
    let root = scratch("render");
    let run = write_run(&root, 2, 0);
    let run_s = run.to_str().unwrap();
    let render =
        |stderr: &str| Running::start(&["render", run_s, "--only-adapters"], &root.join(stderr));
    let images = root.join("out/renders/images");
    let first_images = |n: usize| {
        let images = images.clone();
        move || pngs(&images).len() >= n
    };

    // SIGTERM: the image being rendered is finished, then the run stops with exit 130.
    let mut p = render("term.txt");
    assert!(p.wait_for(LIMIT, first_images(2)), "render ended too soon");
    p.signal("TERM");
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("render stopped:"), "{err}");
    let after_term = check_pngs("SIGTERM", &images);
    assert!(leftovers(&root.join("out")).is_empty());
    println!(
        "SIGTERM: {} of {PROMPTS} images kept; {}",
        after_term.len(),
        errors[0]
    );

    // SIGKILL in the middle of the re-run: the images of both runs are whole; those of the
    // first were not rendered again.
    let kept: Vec<(PathBuf, u64)> = after_term.iter().map(|p| (p.clone(), inode(p))).collect();
    let mut p = render("kill.txt");
    assert!(
        p.wait_for(LIMIT, first_images(after_term.len() + 1)),
        "render ended too soon"
    );
    p.signal("KILL");
    p.finish();
    let after_kill = check_pngs("SIGKILL", &images);
    let left = leftovers(&root.join("out"));
    println!(
        "SIGKILL: {} of {PROMPTS} images kept, left behind: {left:?}",
        after_kill.len()
    );
    for (p, ino) in &kept {
        assert_eq!(inode(p), *ino, "{} was rendered again", p.display());
    }

    // The last run finishes only what is missing, and clears what the killed one left.
    let kept: Vec<(PathBuf, u64)> = after_kill.iter().map(|p| (p.clone(), inode(p))).collect();
    let (code, err) = moslora(&["render", run_s, "--only-adapters"]);
    assert_eq!(code, Some(0), "{err}");
    for (p, ino) in &kept {
        assert_eq!(inode(p), *ino, "{} was rendered again", p.display());
    }
    let all = check_pngs("finished", &images);
    assert_eq!(all.len(), PROMPTS);
    assert!(leftovers(&root.join("out")).is_empty());

    // The same pictures as a render that was never stopped.
    let whole = root.join("whole");
    let whole_run = write_run(&whole, 2, 0);
    let (code, err) = moslora(&["render", whole_run.to_str().unwrap(), "--only-adapters"]);
    assert_eq!(code, Some(0), "{err}");
    for p in &all {
        let twin = whole
            .join("out/renders/images")
            .join(p.file_name().unwrap());
        assert_eq!(
            std::fs::read(p).unwrap(),
            std::fs::read(&twin).unwrap(),
            "{} differs from the uninterrupted render",
            p.display()
        );
    }
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("out/renders/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["images"].as_array().unwrap().len(), PROMPTS);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_compare_stopped_in_training_or_killed_in_rendering_finishes_on_the_next_run() {
    let root = scratch("compare");
    let run = write_run(&root, 6, 1);
    let run_s = run.to_str().unwrap();
    let out = root.join("out");

    // SIGTERM while LoRA trains: checkpoint saved, exit 130, a line saying how to go on.
    let mut p = Running::start(&["compare", run_s], &root.join("term.txt"));
    let ckpt = out.join("lora/checkpoint");
    assert!(
        p.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some()),
        "compare ended too soon"
    );
    p.signal("TERM");
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("run the same command again"), "{err}");
    let stopped = checkpoint_step(&ckpt).unwrap();
    println!("compare SIGTERM in training: stopped at LoRA step {stopped}");

    // Re-run: resumes, trains MoSLoRA, renders; SIGKILL once a few images are out.
    let images = out.join("renders/images");
    let mut p = Running::start(&["compare", run_s], &root.join("kill.txt"));
    assert!(
        p.wait_for(LIMIT, || pngs(&images).len() >= 3),
        "compare ended too soon"
    );
    p.signal("KILL");
    let (_, err) = p.finish();
    assert!(
        err.contains(&format!("resuming at step {stopped}")),
        "{err}"
    );
    let kept: Vec<(PathBuf, u64)> = check_pngs("compare SIGKILL", &images)
        .into_iter()
        .map(|p| {
            let i = inode(&p);
            (p, i)
        })
        .collect();
    println!("compare SIGKILL in rendering: {} images kept", kept.len());

    // Last run: nothing retrained, the kept images reused, the rest rendered.
    let (code, err) = moslora(&["compare", run_s]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("up to date: not retraining"), "{err}");
    for (p, ino) in &kept {
        assert_eq!(inode(p), *ino, "{} was rendered again", p.display());
    }
    // Every prompt x (base, LoRA, MoSLoRA).
    assert_eq!(check_pngs("compare finished", &images).len(), 3 * PROMPTS);
    assert!(leftovers(&out).is_empty());
    std::fs::remove_dir_all(&root).unwrap();
}
