//! Many subjects at once: a SWEEP.yaml (a base RUN.yaml plus axes) expands into indexed
//! tasks, each one adapter's DreamBooth run and renders in its own folder. Every backend runs
//! the same task command (`moslora sweep task SWEEP.yaml [--index I]`, the index otherwise
//! from `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`): [`local`] runs N at a time,
//! [`slurm`] submits a job array and a gather job, [`k8s`] writes an Indexed Job. A task writes
//! its `status.json` last and atomically, and skips when it finds itself done; [`gather`]
//! puts the finished tasks together.

pub mod gather;
pub mod k8s;
pub mod local;
pub mod slurm;
pub mod status;
pub mod subjects;
pub mod task;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapter::MixerInit;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::train::AdapterKind;
pub use subjects::{Kind, SweepSubject};

/// SWEEP.yaml. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// The RUN.yaml every task starts from.
    pub base: PathBuf,
    /// Where the tasks, logs and gathered results go.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// A folder of subject folders (with `subjects.txt`), or google/dreambooth's `dataset/`.
    pub subjects: PathBuf,
    /// `lora`, `moslora` (the base's mixer, orthogonal by default) or `moslora:<mixer>`
    /// (`zero`, `identity`, `normal`, `kaiming`, `orthogonal`, `butterfly`).
    #[serde(default)]
    pub adapters: Option<Vec<String>>,
    /// Adapter ranks; default: the base's.
    #[serde(default)]
    pub ranks: Option<Vec<i64>>,
    /// Run seeds; default: the base's.
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// Per-task resources on a Slurm cluster.
    #[serde(default)]
    pub slurm: slurm::Resources,
    /// The Kubernetes Indexed Job `--emit k8s` writes (image, resources, volume); its
    /// completions and command are the sweep's.
    #[serde(default)]
    pub k8s: Option<k8s::IndexedJob>,
}

fn default_output() -> PathBuf {
    PathBuf::from("sweep")
}

/// One value of the adapter axis.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub kind: AdapterKind,
    /// For MoSLoRA, how its mixer starts.
    pub mixer: MixerInit,
    /// The column name in renders and studies (`lora`, `moslora`, `moslora-zero`).
    pub name: String,
    pub label: String,
}

impl AdapterSpec {
    pub fn parse(s: &str, base_mixer: MixerInit) -> Result<Self> {
        let bad_with = |hint: &str| {
            Error::setting(
                "adapters",
                format!(
                    "adapters: {s:?} is not `lora`, `moslora`, `moslora:<mixer>`, `dora`, `loha` \
                     or `lokr` (mixers: {}){hint}",
                    MixerInit::ALL[1..].join(", ")
                ),
            )
        };
        let bad = || bad_with("");
        let (kind, mixer) = match s.split_once(':') {
            None => (AdapterKind::parse(s).map_err(|_| bad())?, None),
            Some((k, m)) => {
                let kind = AdapterKind::parse(k).map_err(|_| bad())?;
                let mixer = MixerInit::parse(m).map_err(|e| {
                    let text = e.to_string();
                    let hint = text
                        .split_once(" (did you mean")
                        .and_then(|(_, rest)| rest.split_once(')'))
                        .map(|(m, _)| format!("; did you mean{m}"))
                        .unwrap_or_default();
                    bad_with(&hint)
                })?;
                if kind != AdapterKind::Moslora || mixer == MixerInit::None {
                    return Err(bad());
                }
                (kind, Some(mixer))
            }
        };
        Ok(match (kind, mixer) {
            (AdapterKind::Lora | AdapterKind::Dora | AdapterKind::Loha | AdapterKind::Lokr, _) => {
                AdapterSpec {
                    kind,
                    mixer: MixerInit::None,
                    name: kind.name().into(),
                    label: kind.label().into(),
                }
            }
            (AdapterKind::Moslora, None) => AdapterSpec {
                kind,
                mixer: if base_mixer == MixerInit::None {
                    MixerInit::Orthogonal
                } else {
                    base_mixer
                },
                name: "moslora".into(),
                label: "MoSLoRA".into(),
            },
            (AdapterKind::Moslora, Some(m)) => AdapterSpec {
                kind,
                mixer: m,
                name: format!("moslora-{}", m.name()),
                label: format!("MoSLoRA ({})", m.name()),
            },
        })
    }
}

/// One task: one adapter of one subject at one rank and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub index: usize,
    pub subject: usize,
    pub adapter: AdapterSpec,
    pub rank: i64,
    pub seed: u64,
}

/// A sweep expanded: its settings, subjects and tasks (subjects x adapters x ranks x seeds,
/// in that order).
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The SWEEP.yaml, absolute.
    pub file: PathBuf,
    pub config: SweepConfig,
    pub base: RunConfig,
    pub subjects: Vec<SweepSubject>,
    pub tasks: Vec<Task>,
}

impl Sweep {
    /// Read SWEEP.yaml, its base RUN.yaml and its subjects, and expand the axes.
    pub fn load(path: &Path) -> Result<Sweep> {
        let file = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let text = crate::fsutil::read_to_string(&file)?;
        let mut config: SweepConfig = serde_yaml::from_str(&text)
            .map_err(|e| Error::config(&file, format!("invalid sweep ({e})")))?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        for p in [&mut config.base, &mut config.output, &mut config.subjects] {
            if p.is_relative() {
                *p = crate::config::normalize(&dir.join(&*p));
            }
        }
        let base = RunConfig::load(&config.base)?;
        crate::schedule::sampler::SamplerKind::parse_setting(
            "render.scheduler",
            &base.render.scheduler,
        )
        .map_err(|e| Error::config(&config.base, e.to_string()))?;
        let subjects = subjects::read(&config.subjects)?;
        let axis = |name: &str, empty: bool| {
            if empty {
                Err(Error::config(
                    &file,
                    format!("the axis `{name}` has no values: give at least one, or leave it out"),
                ))
            } else {
                Ok(())
            }
        };
        let adapters = match &config.adapters {
            Some(a) => {
                axis("adapters", a.is_empty())?;
                a.clone()
            }
            None => vec!["lora".into(), "moslora".into()],
        };
        let adapters = adapters
            .iter()
            .map(|a| AdapterSpec::parse(a, base.adapter.mixer))
            .collect::<Result<Vec<_>>>()?;
        for (i, a) in adapters.iter().enumerate() {
            if adapters[..i].iter().any(|b| b.name == a.name) {
                return Err(Error::config(
                    &file,
                    format!("adapters: `{}` is given twice", a.name),
                ));
            }
        }
        let ranks = match &config.ranks {
            Some(r) => {
                axis("ranks", r.is_empty())?;
                if let Some(bad) = r.iter().find(|&&r| r < 1) {
                    return Err(Error::config(&file, format!("ranks: {bad} is below 1")));
                }
                r.clone()
            }
            None => vec![base.adapter.rank],
        };
        let seeds = match &config.seeds {
            Some(s) => {
                axis("seeds", s.is_empty())?;
                s.clone()
            }
            None => vec![base.seed],
        };
        let mut tasks = Vec::new();
        for subject in 0..subjects.len() {
            for adapter in &adapters {
                for &rank in &ranks {
                    for &seed in &seeds {
                        tasks.push(Task {
                            index: tasks.len(),
                            subject,
                            adapter: adapter.clone(),
                            rank,
                            seed,
                        });
                    }
                }
            }
        }
        Ok(Sweep {
            file,
            config,
            base,
            subjects,
            tasks,
        })
    }

    /// Rank and seed are in names only when their axis has more than one value.
    fn varies(&self) -> (bool, bool) {
        let first = &self.tasks[0];
        (
            self.tasks.iter().any(|t| t.rank != first.rank),
            self.tasks.iter().any(|t| t.seed != first.seed),
        )
    }

    /// The group a task's renders are gathered into: its subject, plus rank and seed when
    /// they vary (`cat`, `cat-r8-s1`).
    pub fn group(&self, t: &Task) -> String {
        let (r, s) = self.varies();
        let mut g = self.subjects[t.subject].name.clone();
        if r {
            g.push_str(&format!("-r{}", t.rank));
        }
        if s {
            g.push_str(&format!("-s{}", t.seed));
        }
        g
    }

    /// A task's folder name: `0003-cat-moslora` (with rank and seed when they vary).
    pub fn task_name(&self, t: &Task) -> String {
        let g = self.group(t);
        let subject = &self.subjects[t.subject].name;
        let rest = &g[subject.len()..];
        format!("{:04}-{subject}-{}{rest}", t.index, t.adapter.name)
    }

    pub fn task_dir(&self, t: &Task) -> PathBuf {
        self.config.output.join("tasks").join(self.task_name(t))
    }

    /// Where a task's log goes, whichever backend runs it.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.config
            .output
            .join("logs")
            .join(format!("task-{index}.log"))
    }

    /// The run settings of one task: the base with the subject, adapter, rank and seed.
    pub fn run_config(&self, t: &Task) -> Result<RunConfig> {
        let s = &self.subjects[t.subject];
        let mut cfg = self.base.clone();
        cfg.subject.images = s.photos.clone();
        cfg.subject.class_noun = s.class.clone();
        cfg.subject.name = Some(s.name.clone());
        cfg.seed = t.seed;
        cfg.adapter.rank = t.rank;
        if t.adapter.kind == AdapterKind::Moslora {
            cfg.adapter.mixer = t.adapter.mixer;
        }
        cfg.output = self.task_dir(t).join("run");
        cfg.render.out = None;
        // A prompt set with `object:` and `live:` lists (DreamBooth's) renders each subject
        // with its own list, unless the base names a list.
        if cfg.render.set.is_none() {
            let source = cfg
                .render
                .prompts
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "study8".into());
            if crate::render::prompts::load(&source, Some(s.kind.name())).is_ok() {
                cfg.render.set = Some(s.kind.name().to_string());
            }
        }
        cfg.validate()
            .map_err(|e| Error::config(&self.config.base, e))?;
        Ok(cfg)
    }

    /// The task of a backend's index.
    pub fn task(&self, index: usize) -> Result<&Task> {
        self.tasks.get(index).ok_or_else(|| {
            Error::setting(
                "index",
                format!(
                    "task {index} does not exist: {} has tasks 0 to {}",
                    self.file.display(),
                    self.tasks.len() - 1
                ),
            )
        })
    }

    /// The rows `sweep plan` prints.
    pub fn table(&self) -> Vec<[String; 6]> {
        self.tasks
            .iter()
            .map(|t| {
                let s = &self.subjects[t.subject];
                [
                    t.index.to_string(),
                    s.name.clone(),
                    format!("{} ({})", s.class, s.kind.name()),
                    t.adapter.name.clone(),
                    t.rank.to_string(),
                    t.seed.to_string(),
                ]
            })
            .collect()
    }
}

impl Sweep {
    /// The Kubernetes Indexed Job of the whole sweep, from SWEEP.yaml's `k8s:` (its image,
    /// resources and volume), written to `<output>/k8s/job.yaml`. The sweep folder is the
    /// container's working directory (`k8s.workdir`, `/work` by default): the command names
    /// SWEEP.yaml there.
    pub fn emit_k8s(&self) -> Result<PathBuf> {
        let Some(job) = &self.config.k8s else {
            return Err(Error::config(
                &self.file,
                "--emit k8s needs a `k8s:` section (at least `image:` and `name:`)",
            ));
        };
        let mut job = job.clone();
        job.completions = self.tasks.len();
        if job.command.is_empty() {
            let name = self.file.file_name().unwrap_or_default().to_string_lossy();
            job.command = vec![
                "moslora".into(),
                "sweep".into(),
                "task".into(),
                format!("{}/{name}", job.workdir.trim_end_matches('/')),
            ];
        }
        let text = k8s::manifest(&job)?;
        let path = self.config.output.join("k8s").join("job.yaml");
        crate::fsutil::write_bytes(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// The index a backend gives a task: `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`.
pub fn index_from_env() -> Result<usize> {
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map_err(|_| Error::setting("index", format!("{var}={v:?} is not a task index")));
        }
    }
    Err(Error::setting(
        "index",
        "no task index: pass --index, or run under Slurm (SLURM_ARRAY_TASK_ID) or a \
         Kubernetes Indexed Job (JOB_COMPLETION_INDEX)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs_parse_and_a_misspelt_mixer_gets_a_suggestion() {
        let s = AdapterSpec::parse("moslora:kaiming", MixerInit::Orthogonal).unwrap();
        assert_eq!(
            (s.kind, s.mixer),
            (AdapterKind::Moslora, MixerInit::Kaiming)
        );
        let e = AdapterSpec::parse("moslora:orthogonl", MixerInit::Orthogonal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `orthogonal`?"), "{e}");
        let e = AdapterSpec::parse("moslora:zzzzzz", MixerInit::Orthogonal)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
        for (name, kind, label) in [
            ("dora", AdapterKind::Dora, "DoRA"),
            ("LoHa", AdapterKind::Loha, "LoHa"),
            ("lokr", AdapterKind::Lokr, "LoKr"),
        ] {
            let s = AdapterSpec::parse(name, MixerInit::Orthogonal).unwrap();
            assert_eq!((s.kind, s.mixer), (kind, MixerInit::None));
            assert_eq!((s.name.as_str(), s.label.as_str()), (kind.name(), label));
        }
        // The mixer belongs to MoSLoRA alone.
        assert!(AdapterSpec::parse("dora:kaiming", MixerInit::Orthogonal).is_err());
    }
}
