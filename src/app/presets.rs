//! The New comparison page's presets, each a RUN.yaml the advanced panel shows and may edit.

use std::path::Path;

/// (id, label, what it is).
pub const PRESETS: [(&str, &str, &str); 3] = [
    (
        "sdxl",
        "SDXL, the paper's recipe",
        "500 steps, batch 4, rank 4, 1024 px, bf16 on a GPU",
    ),
    (
        "sdxl-low-memory",
        "SDXL, low memory",
        "gradient checkpointing, batch 1 with 4x the steps (2000), 1024 px, bf16 on a GPU",
    ),
    (
        "toy",
        "Toy world",
        "the toy world's small model at 64 px, scored by its judge: runs on a CPU in minutes",
    ),
];

/// The label of preset `id`.
pub fn label(id: &str) -> Option<&'static str> {
    PRESETS.iter().find(|p| p.0 == id).map(|p| p.1)
}

/// A YAML string (quoted, so that any text is one scalar).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// What the app knows of a subject when it writes a run.
pub struct RunSubject<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub identifier: &'a str,
    pub images: &'a Path,
}

/// The RUN.yaml of `preset` for this subject, model and output folder; `prompts` is a
/// bundled set's name or a file of the user's lines.
pub fn run_yaml(
    preset: &str,
    s: &RunSubject,
    model: &Path,
    output: &Path,
    prompts: &str,
) -> Option<String> {
    let head = format!(
        "# {}\nmodel: {}\noutput: {}\nseed: 0\n",
        label(preset)?,
        q(&model.to_string_lossy()),
        q(&output.to_string_lossy())
    );
    let subject = format!(
        "subject:\n  name: {}\n  images: {}\n  identifier: {}\n  class: {}\n  prompt: \"a photo of [V] {{class}}\"\n",
        q(s.name),
        q(&s.images.to_string_lossy()),
        q(s.identifier),
        q(s.class)
    );
    let rest = match preset {
        "sdxl" => format!(
            "device: cuda\ndtype: bf16\n{subject}train:\n  steps: 500\n  batch_size: 4\n  \
             learning_rate: 1.0e-4\n  resolution: 1024\n  checkpoint_every: 50\n  sample_every: 50\n\
             adapter:\n  rank: 4\n  alpha: 4\n  mixer: orthogonal\nrender:\n  prompts: {}\n  \
             seeds: [0, 1, 2, 3]\n  include_base: true\n",
            q(prompts)
        ),
        "sdxl-low-memory" => format!(
            "device: cuda\ndtype: bf16\n{subject}train:\n  steps: 2000\n  batch_size: 1\n  \
             learning_rate: 1.0e-4\n  resolution: 1024\n  gradient_checkpointing: true\n  \
             checkpoint_every: 100\n  sample_every: 200\nadapter:\n  rank: 4\n  alpha: 4\n  \
             mixer: orthogonal\nrender:\n  prompts: {}\n  seeds: [0, 1, 2, 3]\n  include_base: true\n",
            q(prompts)
        ),
        "toy" => format!(
            "device: cpu\n{subject}train:\n  steps: 500\n  batch_size: 4\n  learning_rate: 1.0e-3\n  \
             resolution: 64\n  checkpoint_every: 25\n  sample_every: 25\nadapter:\n  rank: 4\n  \
             alpha: 4\n  mixer: orthogonal\nrender:\n  prompts: {}\n  seeds: [0, 1, 2, 3]\n  \
             steps: 30\n  guidance: 4.0\n  width: 64\n  height: 64\n  include_base: true\n\
             metrics:\n  clip: {}\n",
            q(prompts),
            q(&crate::shipped::toy_judge().to_string_lossy())
        ),
        _ => return None,
    };
    Some(head + &rest)
}
