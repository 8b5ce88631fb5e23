//! `make install`'s script: the installed `moslora` runs from any folder with its own libtorch
//! and its own shipped toy model, with this clone's `.venv` and `assets/` out of sight.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, scratch};

/// The folders of a file's rpath, as `readelf -d` prints them.
fn rpath(file: &Path) -> Vec<String> {
    let o = Command::new("readelf")
        .arg("-d")
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("RUNPATH") || l.contains("RPATH"))
        .unwrap_or_else(|| panic!("{} has no rpath:\n{text}", file.display()));
    let inner = line.split('[').nth(1).unwrap().trim_end_matches(']');
    inner.split(':').map(str::to_string).collect()
}

/// Where each shared library `ldd` resolves for `file` comes from, by name.
fn resolved(file: &Path) -> Vec<(String, String)> {
    let o = Command::new("ldd").arg(file).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            Some((name.to_string(), rest.split(" (").next()?.to_string()))
        })
        .collect()
}

#[test]
fn installed_binary_runs_without_the_clone() {
    let dir = scratch("prefix");
    let prefix = dir.join("prefix");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_moslora"));
    // Hard links where the scratch folder shares the wheel's file system (a copy otherwise):
    // the same files, without copying 3.6 GB for a test.
    let o = Command::new(repo().join("tools/install.sh"))
        .arg(&bin)
        .arg(&prefix)
        .arg("--link")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("installed"), "{said}");
    let installed = prefix.join("bin/moslora");
    for shipped in [
        "toy-model/model_index.json",
        "toy-judge/config.json",
        "configs/sdxl-dreambooth.yaml",
        "prompts/dreambooth.yaml",
    ] {
        assert!(
            prefix.join("share/moslora").join(shipped).exists(),
            "{shipped} was not installed"
        );
    }

    // The wheel the build used, and the installed binary's libtorch: its own copy.
    let wheel_lib = rpath(&bin).last().unwrap().clone();
    assert!(
        Path::new(&wheel_lib).join("libtorch_cpu.so").exists(),
        "{wheel_lib}"
    );
    let libs = resolved(&installed);
    for name in ["libtorch_cpu.so", "libc10.so"] {
        let (_, from) = libs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not linked: {libs:?}"));
        let from = std::fs::canonicalize(from).unwrap();
        assert!(
            from.starts_with(std::fs::canonicalize(&prefix).unwrap()),
            "the installed binary loads {name} from {}, not from its own lib/",
            from.display()
        );
    }

    // With the wheel's libraries and the clone's assets hidden (an empty tmpfs over each, in a
    // mount namespace of its own) and started from another folder, the installed binary runs
    // the demo on its own shipped toy model.
    let site = Path::new(&wheel_lib).join("../..");
    let site = std::fs::canonicalize(site).unwrap();
    let out = dir.join("demo");
    let script = format!(
        "set -e; for d in \"$@\"; do mount -t tmpfs none \"$d\"; done; cd {cwd}; \
         exec {bin} demo --train-steps 1 --render-steps 1 --no-judge --out {out}",
        cwd = dir.display(),
        bin = installed.display(),
        out = out.display()
    );
    let mut hide: Vec<PathBuf> = vec![PathBuf::from(&wheel_lib), repo().join("assets")];
    if site.join("nvidia").exists() {
        hide.push(site.join("nvidia"));
    }
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(&hide)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let shipped_model = prefix.join("share/moslora/toy-model");
    assert!(
        stdout.contains(&shipped_model.display().to_string())
            || stdout.contains(
                &std::fs::canonicalize(&shipped_model)
                    .unwrap()
                    .display()
                    .to_string()
            ),
        "the demo must run on the installed toy model:\n{stdout}"
    );
    assert!(out.join("run/moslora/adapter.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
