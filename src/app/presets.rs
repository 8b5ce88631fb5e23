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

/// Every adapter the trainer trains, as it names them: (name, label), in the trainer's
/// order. The New comparison page offers each, so that a kind the trainer gains shows up there.
pub fn adapters() -> Vec<(&'static str, &'static str)> {
    crate::train::AdapterKind::ALL
        .iter()
        .map(|k| (k.name(), k.label()))
        .collect()
}

/// Whether the New comparison form ticks adapter `name` at first (the trainer's default pair).
pub fn ticked(name: &str) -> bool {
    crate::train::AdapterKind::BOTH
        .iter()
        .any(|k| k.name() == name)
}

/// The adapters job run `cfg` trains and compares (its RUN.yaml's `adapters:`), in its order:
/// the job's chart, results, step series and downloads are drawn from this list.
pub fn of_run(cfg: &crate::config::RunConfig) -> Vec<(&'static str, &'static str)> {
    crate::train::AdapterKind::of_run(cfg)
        .iter()
        .map(|k| (k.name(), k.label()))
        .collect()
}

/// The adapters of the job whose RUN.yaml is `run_yaml`; the default pair when it cannot be
/// read (a job folder removed under the app).
pub fn of_job(run_yaml: &Path) -> Vec<(&'static str, &'static str)> {
    match crate::config::RunConfig::load(run_yaml) {
        Ok(cfg) => of_run(&cfg),
        Err(_) => crate::train::AdapterKind::BOTH
            .iter()
            .map(|k| (k.name(), k.label()))
            .collect(),
    }
}

/// An adapter as the app shows it: (name, label).
pub type Kind<'a> = (&'a str, &'a str);

/// The two adapters a job's blind study sets against each other: LoRA and MoSLoRA when the
/// job trained both (the paper's question), else its first two.
pub fn study_pair<'a>(kinds: &[Kind<'a>]) -> Option<(Kind<'a>, Kind<'a>)> {
    let find = |n: &str| kinds.iter().find(|k| k.0 == n).copied();
    match (find("lora"), find("moslora")) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => Some((*kinds.first()?, *kinds.get(1)?)),
    }
}

/// "A", "A and B", "A, B and C".
pub fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Whether adapter kind `name` trains a mixer (so that the form offers its `adapter.mixer`),
/// as the trainer makes its settings from a RUN.yaml that names one.
pub fn has_mixer(name: &str) -> bool {
    use crate::adapter::lowrank::MixerInit;
    let Ok(kind) = crate::train::AdapterKind::parse(name) else {
        return false;
    };
    let mut cfg = crate::config::RunConfig::default();
    cfg.adapter.mixer = MixerInit::Orthogonal;
    kind.adapter_config(&cfg).mixer != MixerInit::None
}

/// The mixers MoSLoRA may start from (`adapter.mixer`), as RUN.yaml spells them; `none` (plain
/// LoRA) is not one.
pub fn mixers() -> Vec<&'static str> {
    crate::adapter::lowrank::MixerInit::ALL
        .iter()
        .copied()
        .filter(|m| *m != "none")
        .collect()
}

/// The adapter settings a New comparison form may give: which adapters (`adapters:`, at
/// least two, in the trainer's order), rank, MoSLoRA's mixer, and whether each gets LoRA's
/// number of trainable parameters (`same_parameters`).
#[derive(Debug, Clone)]
pub struct AdapterChoice {
    pub adapters: Vec<String>,
    pub rank: u32,
    pub mixer: String,
    pub same_parameters: bool,
}

impl Default for AdapterChoice {
    fn default() -> Self {
        AdapterChoice {
            adapters: crate::train::AdapterKind::BOTH
                .iter()
                .map(|k| k.name().to_string())
                .collect(),
            rank: 4,
            mixer: "orthogonal".into(),
            same_parameters: false,
        }
    }
}

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
    adapter: &AdapterChoice,
) -> Option<String> {
    let head = format!(
        "# {}\nmodel: {}\noutput: {}\nseed: 0\nadapters: [{}]\n{}",
        label(preset)?,
        q(&model.to_string_lossy()),
        q(&output.to_string_lossy()),
        adapter.adapters.join(", "),
        if adapter.same_parameters {
            "same_parameters: true\n"
        } else {
            ""
        }
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
    // The adapter section as the form chose it (alpha = rank: scale 1, the paper's).
    let rest = rest.replace(
        "adapter:\n  rank: 4\n  alpha: 4\n  mixer: orthogonal\n",
        &format!(
            "adapter:\n  rank: {r}\n  alpha: {r}\n  mixer: {}\n",
            adapter.mixer,
            r = adapter.rank
        ),
    );
    Some(head + &rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_run_the_command_line_reads_with_the_adapters_chosen() {
        let s = RunSubject {
            name: "Rex \"the\" dog: [V]",
            class: "dog",
            identifier: "sks",
            images: Path::new("/photos"),
        };
        let choice = AdapterChoice {
            adapters: vec!["lora".into(), "dora".into(), "lokr".into()],
            rank: 8,
            mixer: "kaiming".into(),
            same_parameters: true,
        };
        for (id, _, _) in PRESETS {
            let yaml = run_yaml(id, &s, Path::new("/m"), Path::new("/o"), "toy", &choice).unwrap();
            let cfg =
                crate::config::RunConfig::parse(&yaml).unwrap_or_else(|e| panic!("{id}: {e}"));
            cfg.validate().unwrap();
            assert_eq!(cfg.adapter.rank, 8, "{id}");
            assert_eq!(cfg.adapter.alpha(), 8.0, "{id}");
            assert_eq!(cfg.adapter.mixer.name(), "kaiming", "{id}");
            assert_eq!(cfg.subject.name.as_deref(), Some(s.name), "{id}");
            assert_eq!(cfg.adapters, ["lora", "dora", "lokr"], "{id}");
            assert!(cfg.same_parameters, "{id}");
            assert_eq!(of_run(&cfg)[2], ("lokr", "LoKr"), "{id}");
        }
        assert!(run_yaml("nope", &s, Path::new("/m"), Path::new("/o"), "toy", &choice).is_none());
        // Every mixer the form offers is one RUN.yaml takes; plain LoRA's `none` is not offered.
        for m in mixers() {
            let yaml = format!("adapter:\n  mixer: {m}\n");
            assert!(crate::config::RunConfig::parse(&yaml).is_ok(), "{m}");
        }
        assert!(!mixers().contains(&"none"));
        assert_eq!(adapters()[0], ("lora", "LoRA"));
        assert_eq!(adapters().len(), crate::train::AdapterKind::ALL.len());
        assert!(ticked("lora") && ticked("moslora") && !ticked("loha"));
        assert_eq!(and_list(&["LoRA", "DoRA", "LoHa"]), "LoRA, DoRA and LoHa");
        assert_eq!(and_list(&["LoRA", "MoSLoRA"]), "LoRA and MoSLoRA");
        let three = [("dora", "DoRA"), ("moslora", "MoSLoRA"), ("lora", "LoRA")];
        assert_eq!(study_pair(&three).unwrap().0 .0, "lora");
        assert_eq!(study_pair(&three[..1]), None);
        assert_eq!(study_pair(&three[..2]).unwrap().1 .0, "moslora");
        assert!(has_mixer("moslora") && !has_mixer("lora") && !has_mixer("nope"));
    }
}
