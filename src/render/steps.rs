//! A step series as columns: the adapters a run kept along the way (`train.save_adapter_every`)
//! rendered side by side, so that the artist sees in one grid where training stops adding the
//! subject and starts overfitting, as kohya's `save_every_n_steps` files are compared.

use std::path::{Path, PathBuf};

use super::Column;
use crate::adapter::file::AdapterFile;
use crate::error::{Error, Result};
use crate::train::{AdapterKind, RunPaths};

/// Where a step series is rendered: beside the run's comparison (`renders` ->
/// `renders-steps`), so that it does not replace the comparison's pictures.
pub fn series_dir(render_dir: &Path) -> PathBuf {
    let name = render_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "renders".into());
    render_dir.with_file_name(format!("{name}-steps"))
}

/// The adapters of one kind's run folder (`<output>/<kind>`), by step: those kept along the
/// way and the final one.
fn available(dir: &Path) -> Vec<u64> {
    let paths = RunPaths {
        dir: dir.to_path_buf(),
    };
    let mut steps: Vec<u64> = std::fs::read_dir(paths.step_adapters())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    if let Some(last) = final_steps(&paths) {
        steps.push(last);
    }
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The step count of the run's final adapter, if there is one.
fn final_steps(paths: &RunPaths) -> Option<u64> {
    AdapterFile::read(&paths.adapter())
        .ok()
        .map(|f| f.meta.steps)
}

/// One column per kind (LoRA first) and step, from `run`: a run's output folder (holding
/// `lora/` and `moslora/`) or one kind's folder. `kinds` narrows the kinds (empty: every kind
/// the folder holds). A step without an adapter is an error that lists the steps there are.
pub fn step_columns(run: &Path, steps: &[u64], kinds: &[AdapterKind]) -> Result<Vec<Column>> {
    if steps.is_empty() {
        return Err(Error::setting(
            "--steps",
            "--steps: give the steps to compare, e.g. --steps 100,200,300",
        ));
    }
    if !run.is_dir() {
        return Err(Error::setting(
            "--adapters-from",
            format!(
                "--adapters-from {}: not a folder: give a run's output folder (RUN.yaml's \
                 `output`)",
                run.display()
            ),
        ));
    }
    // A kind's own folder (it has adapters/ or adapter.safetensors), or the run's folder.
    let own = RunPaths {
        dir: run.to_path_buf(),
    };
    let mut folders: Vec<(AdapterKind, PathBuf)> = Vec::new();
    if own.step_adapters().is_dir() || own.adapter().is_file() {
        let name = run.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let kind = AdapterKind::parse(name).unwrap_or(AdapterKind::Moslora);
        folders.push((kind, run.to_path_buf()));
    } else {
        for kind in AdapterKind::ALL {
            let dir = run.join(kind.name());
            if (kinds.is_empty() || kinds.contains(&kind)) && dir.is_dir() {
                folders.push((kind, dir));
            }
        }
    }
    if folders.is_empty() {
        let which = if kinds.is_empty() {
            "LoRA or MoSLoRA".to_string()
        } else {
            let labels: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
            labels.join(" or ")
        };
        return Err(Error::setting(
            "--adapters-from",
            format!(
                "--adapters-from {}: holds no {which} run: give a run's output folder (it \
                 holds lora/ and moslora/)",
                run.display()
            ),
        ));
    }
    let both = folders.len() > 1;
    let mut columns = Vec::new();
    for (kind, dir) in folders {
        let paths = RunPaths { dir: dir.clone() };
        let have = available(&dir);
        for &step in steps {
            let kept = paths.step_adapter(step);
            let file = if kept.is_file() {
                kept
            } else if final_steps(&paths) == Some(step) {
                paths.adapter()
            } else {
                let list = if have.is_empty() {
                    "none: train with train.save_adapter_every".to_string()
                } else {
                    have.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::setting(
                    "--steps",
                    format!(
                        "--steps {step}: no {} adapter for step {step} in {} (steps there: \
                         {list})",
                        kind.label(),
                        dir.display()
                    ),
                ));
            };
            let (name, label) = if both {
                (
                    format!("{}-step{step}", kind.name()),
                    format!("{} {step}", kind.label()),
                )
            } else {
                (format!("step{step}"), format!("step {step}"))
            };
            columns.push(Column {
                name,
                label,
                adapter: Some(file),
            });
        }
    }
    Ok(columns)
}
