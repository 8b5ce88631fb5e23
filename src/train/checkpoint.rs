//! Resumable checkpoints: the adapter (UNet and text-encoder layers), the optimizer state, the
//! step and the loss history, in one folder swapped in atomically (a crash never leaves a half-written checkpoint where a
//! good one was).
//!
//! No generator state is needed: every draw of step `s` comes from a generator seeded with
//! (seed, s).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::optimizer::AdamW;
use crate::adapter::file::{self, AdapterFile, AdapterMeta};
use crate::adapter::{adapted, text_encoder_parts, Adaptable, Component};
use crate::error::{Error, Result};
use crate::sdxl::pipeline::TextEncoders;
use crate::sdxl::unet::UNet2DConditionModel;
use crate::sdxl::weights::save_safetensors;

#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub step: u64,
    pub fingerprint: String,
    pub losses: Vec<f32>,
    pub learning_rates: Vec<f64>,
    /// Each step's gradient norm before clipping (absent from checkpoints made before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grad_norms: Vec<f32>,
    /// The validation losses measured so far, (step, loss).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation: Vec<(u64, f32)>,
}

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// What a checkpoint keeps besides the adapter tensors: the optimizer (its step and moments),
/// the settings' fingerprint, the adapter metadata and the loss history so far.
#[derive(Debug)]
pub struct RunState<'a> {
    pub fingerprint: &'a str,
    pub opt: &'a AdamW,
    pub meta: &'a AdapterMeta,
    pub losses: &'a [f32],
    pub learning_rates: &'a [f64],
    pub grad_norms: &'a [f32],
    pub validation: &'a [(u64, f32)],
}

/// Write a checkpoint of the UNet's adapters and, when the run trains them, the text
/// encoders' (`text`).
pub fn save(
    dir: &Path,
    unet: &mut UNet2DConditionModel,
    mut text: Option<&mut TextEncoders>,
    run: &RunState,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let text = text.as_deref_mut();
        file::save_with_text(unet, text, run.meta, &tmp.join("adapter.safetensors"))?;
        save_safetensors(&run.opt.state(), None, &tmp.join("optimizer.safetensors"))?;
        let state = State {
            step: run.opt.step,
            fingerprint: run.fingerprint.to_string(),
            losses: run.losses.to_vec(),
            learning_rates: run.learning_rates.to_vec(),
            grad_norms: run.grad_norms.to_vec(),
            validation: run.validation.to_vec(),
        };
        let json = serde_json::to_string(&state).expect("serialisable");
        crate::fsutil::write_bytes(&tmp.join("state.json"), json.as_bytes())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        // Named as the checkpoint the user knows, not the hidden folder it was built in.
        return Err(match crate::fsutil::no_space(e, dir, None) {
            Error::NoSpace {
                reason,
                needed,
                free,
                ..
            } => Error::NoSpace {
                path: dir.to_path_buf(),
                reason,
                needed,
                free,
            },
            e => e,
        });
    }
    // Two renames: between them a killed run leaves only the `.old` folder, which `recover`
    // puts back.
    let old = sibling(dir, "old");
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    let _ = std::fs::remove_dir_all(&old);
    remove_dead_olds(dir);
    Ok(())
}

/// The `.NAME.old-PID` siblings of checkpoint `dir`: earlier checkpoints set aside during a
/// swap.
fn olds(dir: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.old-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Remove set-aside checkpoints once a current one is in place.
fn remove_dead_olds(dir: &Path) {
    if dir.join("state.json").exists() {
        for o in olds(dir) {
            let _ = std::fs::remove_dir_all(o);
        }
    }
}

/// A run killed between the two renames of [`save`] leaves no checkpoint folder, only the
/// previous checkpoint set aside as `.NAME.old-PID`: put it back. Without a checkpoint folder
/// a resumed run would start again from step 0.
pub fn recover(dir: &Path) -> Result<()> {
    if dir.join("state.json").exists() {
        remove_dead_olds(dir);
        return Ok(());
    }
    // Complete set-aside checkpoints only (each was a whole checkpoint when set aside).
    if let Some(old) = olds(dir)
        .into_iter()
        .find(|o| o.join("state.json").exists())
    {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
        remove_dead_olds(dir);
    }
    Ok(())
}

/// Restore a checkpoint into freshly injected adapters (of the UNet, and of the text encoders
/// when given) and optimizer. `Ok(None)` when there is no checkpoint; an error when it belongs
/// to other settings or is damaged.
pub fn load(
    dir: &Path,
    fingerprint: &str,
    unet: &mut UNet2DConditionModel,
    text: Option<&mut TextEncoders>,
    opt: &mut AdamW,
) -> Result<Option<State>> {
    recover(dir)?;
    let state_path = dir.join("state.json");
    if !state_path.exists() {
        return Ok(None);
    }
    let state: State = serde_json::from_str(&crate::fsutil::read_to_string(&state_path)?)
        .map_err(|e| Error::config(&state_path, format!("damaged checkpoint state ({e})")))?;
    if state.fingerprint != fingerprint {
        return Err(Error::StaleCheckpoint {
            dir: dir.to_path_buf(),
            changed: Vec::new(),
        });
    }
    let adapter_path = dir.join("adapter.safetensors");
    let saved = AdapterFile::read(&adapter_path)?;
    let _guard = tch::no_grad_guard();
    let restore = |c: Component, model: &mut dyn Adaptable| -> Result<()> {
        let layers = saved.component_layers(c);
        for l in adapted(model) {
            let t = layers.get(&l.name).ok_or_else(|| {
                Error::msg(format!(
                    "{}: checkpoint lacks {} layer `{}`",
                    adapter_path.display(),
                    c.prefix(),
                    l.name
                ))
            })?;
            let a = crate::adapter::layer_adapter(l).expect("adapted");
            for (part, into) in a.tensors() {
                let saved = t.parts.get(part).ok_or_else(|| {
                    Error::msg(format!(
                        "{}: checkpoint lacks `{part}` of {} layer `{}`",
                        adapter_path.display(),
                        c.prefix(),
                        l.name
                    ))
                })?;
                into.detach().copy_(saved);
            }
        }
        Ok(())
    };
    restore(Component::Unet, unet)?;
    if let Some(text) = text {
        for (c, model) in text_encoder_parts(text) {
            restore(c, model)?;
        }
    }
    let opt_path = dir.join("optimizer.safetensors");
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&opt_path)
        .map_err(|e| Error::BadFile {
            path: opt_path.clone(),
            what: format!("damaged optimizer state ({e})"),
        })?
        .into_iter()
        .collect();
    opt.load_state(&tensors, state.step)?;
    if state.losses.len() as u64 != state.step {
        return Err(Error::config(
            &state_path,
            "loss history does not match the step count",
        ));
    }
    Ok(Some(state))
}

/// The checkpoint in `dir` as a resumed run would find it (a swap a killed run left half done
/// counts, as [`recover`] would complete it), without changing anything: its state and the
/// folder holding it. `None` when there is none, or its state cannot be read.
pub fn peek(dir: &Path) -> Option<(State, PathBuf)> {
    let read = |d: &Path| -> Option<State> {
        let text = std::fs::read_to_string(d.join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    };
    if dir.join("state.json").exists() {
        return read(dir).map(|s| (s, dir.to_path_buf()));
    }
    olds(dir).into_iter().find_map(|o| read(&o).map(|s| (s, o)))
}

/// Does the checkpoint in `dir` exist and belong to these settings?
pub fn matches(dir: &Path, fingerprint: &str) -> bool {
    if recover(dir).is_err() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
        return false;
    };
    serde_json::from_str::<State>(&text).is_ok_and(|s| s.fingerprint == fingerprint)
}
