//! The Kubernetes backend of a sweep: an Indexed Job, written as YAML for `kubectl apply -f`,
//! never run from here.
//!
//! A sweep is N indexed tasks and every backend runs the same task command,
//! `moslora sweep task SWEEP.yaml --index I`. The Job leaves `--index` out: in
//! `completionMode: Indexed` Kubernetes starts one pod per index in `0..completions` and sets
//! `JOB_COMPLETION_INDEX` in each pod's environment (and the pod's
//! `batch.kubernetes.io/job-completion-index` annotation); the task reads its index from that
//! variable when `--index` is absent.
//!
//! The job's settings come from the sweep's YAML (`IndexedJob` deserializes, unknown fields
//! refused); the sweep fills in `completions` (its task count) and `command`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Kubernetes limit on `completions` and `parallelism` of an Indexed Job.
pub const MAX_INDEXED_COMPLETIONS: usize = 100_000;

/// Exit codes of moslora (see `exit_code` in main.rs) that another try of the same index
/// cannot change: 2, a setting, output or checkpoint the person must change; 3, a training
/// loss that stopped being finite (the same seed diverges again). With
/// `backoff_limit_per_index` the Job fails such an index at once instead of retrying it.
pub const EXIT_CODES_NOT_RETRIED: [i32; 2] = [2, 3];

/// The variable Kubernetes sets to the pod's index in an Indexed Job.
pub const INDEX_VARIABLE: &str = "JOB_COMPLETION_INDEX";

/// A sweep as a Kubernetes Indexed Job. Field names in errors are `k8s.<field>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexedJob {
    /// The Job's name: an RFC 1123 DNS label (lowercase alphanumerics and `-`, at most 63).
    pub name: String,
    /// The namespace; none: whatever `kubectl` is pointed at.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The container image that has `moslora` on its PATH.
    pub image: String,
    /// Tasks in the sweep, one pod per index (filled in by the sweep).
    #[serde(default)]
    pub completions: usize,
    /// Pods at once.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// The task command without `--index`, e.g. `["moslora", "sweep", "task",
    /// "/work/sweep.yaml"]` (filled in by the sweep).
    #[serde(default)]
    pub command: Vec<String>,
    /// The container's working directory, where `volume` is mounted.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// CPU cores requested and limited to; also `OMP_NUM_THREADS` unless `env` sets it.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory requested and limited to, a Kubernetes quantity: `32Gi`.
    #[serde(default)]
    pub memory: Option<String>,
    /// `nvidia.com/gpu` per pod (a limit: extended resources take their request from it).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// A PersistentVolumeClaim mounted at `workdir`: the models, photos and outputs.
    #[serde(default)]
    pub volume: Option<Volume>,
    /// Retries of each index on its own (`backoffLimitPerIndex`); exit codes that retrying
    /// cannot change (EXIT_CODES_NOT_RETRIED) then fail their index at once.
    #[serde(default)]
    pub backoff_limit_per_index: Option<u32>,
    /// Retries of the whole Job when `backoff_limit_per_index` is not given (`backoffLimit`;
    /// Kubernetes' default, 6, when neither is).
    #[serde(default)]
    pub backoff_limit: Option<u32>,
    /// The Job's time limit, all indexes together (`activeDeadlineSeconds`).
    #[serde(default)]
    pub active_deadline_seconds: Option<u64>,
    /// Seconds Kubernetes keeps the finished Job and its pods (`ttlSecondsAfterFinished`).
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<u32>,
    /// More environment variables of the task (HF_HOME, ...), in name order.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A PersistentVolumeClaim mounted at the job's `workdir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The claim's name.
    pub claim: String,
    /// A folder inside the volume to mount instead of its root.
    #[serde(default)]
    pub sub_path: Option<String>,
}

fn default_parallelism() -> usize {
    1
}

fn default_workdir() -> String {
    "/work".to_string()
}

impl IndexedJob {
    /// A job of `completions` tasks running `command`, one pod at a time, in `/work`, with no
    /// resources, volume or limits set.
    pub fn new(name: &str, image: &str, completions: usize, command: Vec<String>) -> Self {
        IndexedJob {
            name: name.to_string(),
            namespace: None,
            image: image.to_string(),
            completions,
            parallelism: default_parallelism(),
            command,
            workdir: default_workdir(),
            cpus: None,
            memory: None,
            gpus: None,
            volume: None,
            backoff_limit_per_index: None,
            backoff_limit: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            env: BTreeMap::new(),
        }
    }

    /// Every setting that Kubernetes would refuse (or that cannot run a task), the first one
    /// found as `Error::Setting` naming its field.
    pub fn validate(&self) -> Result<()> {
        dns_label("k8s.name", &self.name)?;
        if let Some(ns) = &self.namespace {
            dns_label("k8s.namespace", ns)?;
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(Error::setting(
                "k8s.image",
                format!(
                    "k8s.image {:?} is not an image reference: expected e.g. \
                     `registry.example.com/moslora:0.1.0`",
                    self.image
                ),
            ));
        }
        for (field, n) in [
            ("k8s.completions", self.completions),
            ("k8s.parallelism", self.parallelism),
        ] {
            if n == 0 || n > MAX_INDEXED_COMPLETIONS {
                return Err(Error::setting(
                    field,
                    format!("{field} is {n}: an Indexed Job takes 1 to {MAX_INDEXED_COMPLETIONS}"),
                ));
            }
        }
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err(Error::setting(
                "k8s.command",
                "k8s.command is empty: expected the task command, e.g. \
                 [moslora, sweep, task, /work/sweep.yaml]",
            ));
        }
        if !self.workdir.starts_with('/') {
            return Err(Error::setting(
                "k8s.workdir",
                format!(
                    "k8s.workdir {:?} is not an absolute path (the container's working \
                     directory and the volume's mount point)",
                    self.workdir
                ),
            ));
        }
        for (field, n) in [("k8s.cpus", self.cpus), ("k8s.gpus", self.gpus)] {
            if n == Some(0) {
                return Err(Error::setting(
                    field,
                    format!("{field} is 0: leave it out to ask for none"),
                ));
            }
        }
        if let Some(m) = &self.memory {
            if !is_quantity(m) {
                return Err(Error::setting(
                    "k8s.memory",
                    format!(
                        "k8s.memory {m:?} is not a Kubernetes quantity: expected a number with \
                         an optional suffix Ki, Mi, Gi, Ti, k, M, G or T, e.g. `32Gi`"
                    ),
                ));
            }
        }
        if let Some(v) = &self.volume {
            dns_subdomain("k8s.volume.claim", &v.claim)?;
            if let Some(p) = &v.sub_path {
                if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(Error::setting(
                        "k8s.volume.sub_path",
                        format!(
                            "k8s.volume.sub_path {p:?} must be a relative path inside the \
                             volume, without `..`"
                        ),
                    ));
                }
            }
        }
        if self.active_deadline_seconds == Some(0) {
            return Err(Error::setting(
                "k8s.active_deadline_seconds",
                "k8s.active_deadline_seconds is 0: leave it out for no time limit",
            ));
        }
        for name in self.env.keys() {
            let mut chars = name.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(Error::setting(
                    "k8s.env",
                    format!(
                        "k8s.env: {name:?} is not a variable name (letters, digits and `_`, \
                         not starting with a digit)"
                    ),
                ));
            }
            if name == INDEX_VARIABLE {
                return Err(Error::setting(
                    "k8s.env",
                    format!(
                        "k8s.env sets {INDEX_VARIABLE}: Kubernetes sets it to each pod's index, \
                         leave it out"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `field`'s value as an RFC 1123 DNS label: 1 to 63 lowercase alphanumerics or `-`, starting
/// and ending with an alphanumeric.
pub fn dns_label(field: &str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        Some("is empty".to_string())
    } else if value.len() > 63 {
        Some(format!("is {} characters long, more than 63", value.len()))
    } else if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!("has {c:?}"))
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("starts or ends with `-`".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::setting(
            field,
            format!(
                "{field} {value:?} {p}: a Kubernetes name (RFC 1123 DNS label) is 1 to 63 \
                 lowercase letters, digits or `-`, starting and ending with a letter or digit"
            ),
        )),
    }
}

/// `field`'s value as an RFC 1123 DNS subdomain (a claim's name): at most 253 characters,
/// dot-separated DNS labels.
fn dns_subdomain(field: &str, value: &str) -> Result<()> {
    if value.len() > 253 {
        return Err(Error::setting(
            field,
            format!("{field} is {} characters long, more than 253", value.len()),
        ));
    }
    value.split('.').try_for_each(|label| {
        dns_label(field, label).map_err(|_| {
            Error::setting(
                field,
                format!(
                    "{field} {value:?} is not a Kubernetes name (RFC 1123 DNS subdomain): \
                     lowercase letters, digits, `-` and `.`, each dot-separated part starting \
                     and ending with a letter or digit"
                ),
            )
        })
    })
}

/// A Kubernetes quantity as people write memory: digits, an optional fraction, an optional
/// binary or decimal suffix.
fn is_quantity(s: &str) -> bool {
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[number.len()..];
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole)
        && parts.next().is_none_or(digits)
        && matches!(
            suffix,
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
        )
}

// The manifest's shape: the fields of the Kubernetes objects written, in their order.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    spec: JobSpec,
}

#[derive(Serialize)]
struct Meta {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobSpec {
    completion_mode: &'static str,
    completions: usize,
    parallelism: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_limit_per_index: Option<u32>,
    pod_failure_policy: PodFailurePolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_deadline_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds_after_finished: Option<u32>,
    template: PodTemplate,
}

#[derive(Serialize)]
struct PodFailurePolicy {
    rules: Vec<PodFailureRule>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodFailureRule {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_exit_codes: Option<OnExitCodes>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    on_pod_conditions: Vec<OnPodCondition>,
}

#[derive(Serialize)]
struct OnExitCodes {
    operator: &'static str,
    values: Vec<i32>,
}

#[derive(Serialize)]
struct OnPodCondition {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
}

#[derive(Serialize)]
struct PodTemplate {
    metadata: Meta,
    spec: PodSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    restart_policy: &'static str,
    containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<PodVolume>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    command: Vec<String>,
    working_dir: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<Resources>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Serialize)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(Serialize)]
struct Resources {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    requests: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    limits: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: &'static str,
    mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_path: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodVolume {
    name: &'static str,
    persistent_volume_claim: ClaimSource,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClaimSource {
    claim_name: String,
}

/// The volume's name inside the pod.
const VOLUME_NAME: &str = "work";

/// The job as a `batch/v1` Job manifest (YAML, a comment on top saying how it runs), after
/// `validate`. The pods never restart in place (`restartPolicy: Never`): a failed task is
/// retried in a new pod, per index when `backoff_limit_per_index` is given; a pod evicted or
/// preempted (`DisruptionTarget`) does not count as a failure.
pub fn manifest(job: &IndexedJob) -> Result<String> {
    job.validate()?;
    let labels = || {
        BTreeMap::from([
            ("app.kubernetes.io/name", "moslora".to_string()),
            ("app.kubernetes.io/component", "sweep".to_string()),
            ("app.kubernetes.io/instance", job.name.clone()),
        ])
    };

    let mut env = job.env.clone();
    if let Some(cpus) = job.cpus {
        env.entry("OMP_NUM_THREADS".into())
            .or_insert_with(|| cpus.to_string());
    }
    let env = env
        .into_iter()
        .map(|(name, value)| EnvVar { name, value })
        .collect();

    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpus) = job.cpus {
        requests.insert("cpu", cpus.to_string());
        limits.insert("cpu", cpus.to_string());
    }
    if let Some(m) = &job.memory {
        requests.insert("memory", m.clone());
        limits.insert("memory", m.clone());
    }
    if let Some(g) = job.gpus {
        limits.insert("nvidia.com/gpu", g.to_string());
    }
    let resources = (!limits.is_empty()).then_some(Resources { requests, limits });

    let (volumes, volume_mounts) = match &job.volume {
        None => (vec![], vec![]),
        Some(v) => (
            vec![PodVolume {
                name: VOLUME_NAME,
                persistent_volume_claim: ClaimSource {
                    claim_name: v.claim.clone(),
                },
            }],
            vec![VolumeMount {
                name: VOLUME_NAME,
                mount_path: job.workdir.clone(),
                sub_path: v.sub_path.clone(),
            }],
        ),
    };

    let mut rules = vec![PodFailureRule {
        action: "Ignore",
        on_exit_codes: None,
        on_pod_conditions: vec![OnPodCondition {
            kind: "DisruptionTarget",
            status: "True",
        }],
    }];
    if job.backoff_limit_per_index.is_some() {
        rules.push(PodFailureRule {
            action: "FailIndex",
            on_exit_codes: Some(OnExitCodes {
                operator: "In",
                values: EXIT_CODES_NOT_RETRIED.to_vec(),
            }),
            on_pod_conditions: vec![],
        });
    }

    let manifest = Job {
        api_version: "batch/v1",
        kind: "Job",
        metadata: Meta {
            name: Some(job.name.clone()),
            namespace: job.namespace.clone(),
            labels: labels(),
        },
        spec: JobSpec {
            completion_mode: "Indexed",
            completions: job.completions,
            parallelism: job.parallelism,
            backoff_limit: match job.backoff_limit_per_index {
                Some(_) => None,
                None => job.backoff_limit,
            },
            backoff_limit_per_index: job.backoff_limit_per_index,
            pod_failure_policy: PodFailurePolicy { rules },
            active_deadline_seconds: job.active_deadline_seconds,
            ttl_seconds_after_finished: job.ttl_seconds_after_finished,
            template: PodTemplate {
                metadata: Meta {
                    name: None,
                    namespace: None,
                    labels: labels(),
                },
                spec: PodSpec {
                    restart_policy: "Never",
                    containers: vec![Container {
                        name: "task",
                        image: job.image.clone(),
                        command: job.command.clone(),
                        working_dir: job.workdir.clone(),
                        env,
                        resources,
                        volume_mounts,
                    }],
                    volumes,
                },
            },
        },
    };
    let yaml = serde_yaml::to_string(&manifest)
        .map_err(|e| Error::msg(format!("writing the Kubernetes manifest: {e}")))?;
    Ok(format!(
        "# moslora sweep `{name}`: {n} task(s), {p} at a time; submit with `kubectl apply -f`.\n\
         # Kubernetes sets {INDEX_VARIABLE} (0 to {last}) in each pod: the task reads its index\n\
         # from it.\n{yaml}",
        name = job.name,
        n = job.completions,
        p = job.parallelism,
        last = job.completions - 1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> IndexedJob {
        IndexedJob::new(
            "dogs-rank4",
            "registry.example.com/moslora:0.1.0",
            30,
            ["moslora", "sweep", "task", "/work/sweep.yaml"]
                .map(String::from)
                .to_vec(),
        )
    }

    fn value(job: &IndexedJob) -> serde_yaml::Value {
        serde_yaml::from_str(&manifest(job).unwrap()).unwrap()
    }

    fn setting_field(r: Result<String>) -> (String, String) {
        match r {
            Err(Error::Setting { field, what }) => (field, what),
            other => panic!("expected a setting error, got {other:?}"),
        }
    }

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "dogs-rank4", "0x", &"a".repeat(63)] {
            assert!(dns_label("k8s.name", ok).is_ok(), "{ok:?} refused");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("Dogs", "'D'"),
            ("dogs_rank4", "'_'"),
            ("dogs.rank4", "'.'"),
            ("-dogs", "starts or ends"),
            ("dogs-", "starts or ends"),
            (&"a".repeat(64), "64 characters"),
        ] {
            let mut j = job();
            j.name = bad.to_string();
            let (field, what) = setting_field(manifest(&j));
            assert_eq!(field, "k8s.name");
            assert!(what.contains(why), "{bad:?}: {what}");
            assert!(what.contains("RFC 1123"), "{what}");
        }
        let mut j = job();
        j.namespace = Some("Team A".into());
        assert_eq!(setting_field(manifest(&j)).0, "k8s.namespace");
    }

    #[test]
    fn refusals_name_their_field() {
        type Change = Box<dyn Fn(&mut IndexedJob)>;
        let cases: Vec<(&str, Change)> = vec![
            ("k8s.completions", Box::new(|j| j.completions = 0)),
            ("k8s.completions", Box::new(|j| j.completions = 100_001)),
            ("k8s.parallelism", Box::new(|j| j.parallelism = 0)),
            ("k8s.image", Box::new(|j| j.image = " ".into())),
            ("k8s.command", Box::new(|j| j.command.clear())),
            ("k8s.workdir", Box::new(|j| j.workdir = "work".into())),
            ("k8s.cpus", Box::new(|j| j.cpus = Some(0))),
            ("k8s.gpus", Box::new(|j| j.gpus = Some(0))),
            ("k8s.memory", Box::new(|j| j.memory = Some("32GB".into()))),
            ("k8s.memory", Box::new(|j| j.memory = Some("lots".into()))),
            (
                "k8s.volume.claim",
                Box::new(|j| {
                    j.volume = Some(Volume {
                        claim: "My_Claim".into(),
                        sub_path: None,
                    })
                }),
            ),
            (
                "k8s.volume.sub_path",
                Box::new(|j| {
                    j.volume = Some(Volume {
                        claim: "data".into(),
                        sub_path: Some("../etc".into()),
                    })
                }),
            ),
            (
                "k8s.active_deadline_seconds",
                Box::new(|j| j.active_deadline_seconds = Some(0)),
            ),
            (
                "k8s.env",
                Box::new(|j| {
                    j.env.insert("1X".into(), "v".into());
                }),
            ),
            (
                "k8s.env",
                Box::new(|j| {
                    j.env.insert(INDEX_VARIABLE.into(), "0".into());
                }),
            ),
        ];
        for (field, change) in cases {
            let mut j = job();
            change(&mut j);
            let (got, what) = setting_field(manifest(&j));
            assert_eq!(got, field, "{what}");
            assert!(what.contains(field), "{what}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["32Gi", "512Mi", "1.5Gi", "1000", "4G", "64k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "32GB", "32 Gi", "1.Gi", ".5Gi", "-1Gi", "3e9"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn key_fields() {
        let v = value(&job());
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        assert_eq!(v["metadata"]["name"], "dogs-rank4");
        assert!(v["metadata"].get("namespace").is_none());
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/name"], "moslora");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/component"],
            "sweep"
        );
        let spec = &v["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["completions"], 30);
        assert_eq!(spec["parallelism"], 1);
        assert!(spec.get("backoffLimit").is_none());
        assert!(spec.get("backoffLimitPerIndex").is_none());
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(
            spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"],
            "sweep"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example.com/moslora:0.1.0");
        let command: Vec<String> = serde_yaml::from_value(c["command"].clone()).unwrap();
        assert_eq!(command, ["moslora", "sweep", "task", "/work/sweep.yaml"]);
        assert_eq!(c["workingDir"], "/work");
        for absent in ["resources", "env", "volumeMounts"] {
            assert!(c.get(absent).is_none(), "{absent}");
        }
        assert!(pod.get("volumes").is_none());
        assert!(manifest(&job()).unwrap().contains(INDEX_VARIABLE));
    }

    #[test]
    fn resources_volume_and_retries() {
        let mut j = job();
        j.namespace = Some("research".into());
        j.parallelism = 4;
        j.cpus = Some(8);
        j.memory = Some("32Gi".into());
        j.gpus = Some(1);
        j.volume = Some(Volume {
            claim: "moslora-data".into(),
            sub_path: Some("dogs".into()),
        });
        j.backoff_limit = Some(5);
        j.backoff_limit_per_index = Some(2);
        j.active_deadline_seconds = Some(86_400);
        j.ttl_seconds_after_finished = Some(3600);
        j.env.insert("HF_HOME".into(), "/work/hf".into());
        let v = value(&j);
        assert_eq!(v["metadata"]["namespace"], "research");
        let spec = &v["spec"];
        assert_eq!(spec["parallelism"], 4);
        assert_eq!(spec["backoffLimitPerIndex"], 2);
        // backoffLimit left to Kubernetes when counting per index
        assert!(spec.get("backoffLimit").is_none());
        assert_eq!(spec["activeDeadlineSeconds"], 86_400);
        assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
        let rules = spec["podFailurePolicy"]["rules"].as_sequence().unwrap();
        assert_eq!(rules[0]["action"], "Ignore");
        assert_eq!(rules[1]["action"], "FailIndex");
        assert_eq!(rules[1]["onExitCodes"]["values"][0], 2);
        let pod = &spec["template"]["spec"];
        let c = &pod["containers"][0];
        let r = &c["resources"];
        // quantities are strings, as the API's schema has them
        assert_eq!(r["requests"]["cpu"], "8");
        assert_eq!(r["limits"]["cpu"], "8");
        assert_eq!(r["requests"]["memory"], "32Gi");
        assert_eq!(r["limits"]["memory"], "32Gi");
        assert_eq!(r["limits"]["nvidia.com/gpu"], "1");
        assert!(r["requests"].get("nvidia.com/gpu").is_none());
        assert_eq!(c["env"][0]["name"], "HF_HOME");
        assert_eq!(c["env"][1]["name"], "OMP_NUM_THREADS");
        assert_eq!(c["env"][1]["value"], "8");
        assert_eq!(c["volumeMounts"][0]["name"], "work");
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/work");
        assert_eq!(c["volumeMounts"][0]["subPath"], "dogs");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "moslora-data"
        );

        j.backoff_limit_per_index = None;
        let v = value(&j);
        assert_eq!(v["spec"]["backoffLimit"], 5);
        assert_eq!(
            v["spec"]["podFailurePolicy"]["rules"]
                .as_sequence()
                .unwrap()
                .len(),
            1
        );
        // env overrides the thread count derived from cpus
        j.env.insert("OMP_NUM_THREADS".into(), "4".into());
        let v = value(&j);
        let env = v["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap();
        assert_eq!(env.len(), 2);
        assert_eq!(env[1]["value"], "4");
    }

    #[test]
    fn deserializes_from_the_sweep_yaml() {
        let j: IndexedJob = serde_yaml::from_str(
            "name: dogs\nimage: moslora:0.1\ncpus: 8\nmemory: 32Gi\ngpus: 1\n\
             volume: {claim: data}\nenv: {HF_HOME: /work/hf}\n",
        )
        .unwrap();
        assert_eq!(j.parallelism, 1);
        assert_eq!(j.workdir, "/work");
        assert_eq!(j.completions, 0);
        assert_eq!(j.volume.unwrap().claim, "data");
        let e = serde_yaml::from_str::<IndexedJob>("name: dogs\nimage: x\ngpu: 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `gpu`"), "{e}");
    }
}
