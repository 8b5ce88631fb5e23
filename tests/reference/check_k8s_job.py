"""Check a Kubernetes Job manifest written by moslora (`sweep --emit k8s`) against the API's
schema as the official Python client (`kubernetes`) models it.

usage: check_k8s_job.py MANIFEST.yaml [EXPECTED.json]

1. Every key, at every depth, must be one the model of that place knows: the client's
   deserializer drops unknown keys silently (a misspelt `completionsMode` would vanish and the
   Job run with defaults), so the dict is walked against each model's `attribute_map`,
   following `openapi_types` down lists, maps and nested models.
2. The manifest deserializes into `V1Job` (types and required fields checked by the client's
   models) and serializes back to the same dict.
3. The fields a sweep depends on: batch/v1 Job, Indexed completion, restartPolicy Never, one
   container with a command, the moslora labels; with EXPECTED.json (keys: name, namespace,
   completions, parallelism, command, workdir, requests, limits, claim, backoff_limit_per_index),
   those values.

Exits 1 listing every problem found.
"""
import difflib
import json
import re
import sys

import yaml
import kubernetes
from kubernetes import client
from kubernetes.client import models

PRIMITIVES = {"str", "int", "float", "bool", "date", "datetime", "object", "bytearray", "decimal.Decimal"}


def inner(klass):
    """The element type of a container type string, in the client's old (`list[X]`,
    `dict(str, X)`) or new (`List[X]`, `Dict[str, X]`, `Optional[X]`) spelling:
    ("list" | "dict" | "optional" | None, element)."""
    for kind, pattern in [
        ("optional", r"Optional\[(.*)\]$"),
        ("list", r"[Ll]ist\[(.*)\]$"),
        ("dict", r"Dict\[[^,]*, (.*)\]$"),
        ("dict", r"dict\([^,]*, (.*)\)$"),
    ]:
        m = re.match(pattern, klass)
        if m:
            return kind, m.group(1)
    return None, klass


def unknown_keys(data, klass, path, problems):
    """Note every key of `data` (at `path`) that the model `klass` does not know, recursively."""
    kind, sub = inner(klass)
    if kind == "optional":
        return unknown_keys(data, sub, path, problems)
    if kind == "list":
        if isinstance(data, list):
            for i, item in enumerate(data):
                unknown_keys(item, sub, f"{path}[{i}]", problems)
        return
    if kind == "dict":
        if isinstance(data, dict):
            for k, v in data.items():
                unknown_keys(v, sub, f"{path}[{k!r}]", problems)
        return
    if klass in PRIMITIVES or data is None:
        return
    model = getattr(models, klass, None)
    if model is None or not hasattr(model, "attribute_map"):
        problems.append(f"{path}: the client has no model {klass}")
        return
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping ({klass}), found {type(data).__name__}")
        return
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    for k, v in data.items():
        if k not in by_key:
            near = difflib.get_close_matches(k, by_key, n=1)
            hint = f"did you mean {near[0]}?" if near else "it knows: " + ", ".join(sorted(by_key))
            problems.append(f"{path}.{k}: unknown key in {klass} ({hint})".lstrip("."))
            continue
        unknown_keys(v, model.openapi_types[by_key[k]], f"{path}.{k}".lstrip("."), problems)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        data = yaml.safe_load(f)
    expected = {}
    if len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            expected = json.load(f)

    problems = []
    unknown_keys(data, "V1Job", "", problems)

    api = client.ApiClient()
    try:
        job = api._ApiClient__deserialize(data, "V1Job")
    except Exception as e:  # the models' own validation: types, required fields
        problems.append(f"does not deserialize into V1Job: {e}")
        job = None

    def check(what, ok, found=None):
        if not ok:
            problems.append(f"{what} (found {found!r})")

    if job is not None:
        if not problems:  # an unknown key, already reported, is also dropped on the way back
            back = api.sanitize_for_serialization(job)
            check("V1Job serializes back to the manifest", back == data, back)
        spec = job.spec
        check("apiVersion is batch/v1", job.api_version == "batch/v1", job.api_version)
        check("kind is Job", job.kind == "Job", job.kind)
        check("metadata.name set", bool(job.metadata and job.metadata.name), job.metadata)
        for where, meta in [("metadata", job.metadata), ("spec.template.metadata", spec and spec.template.metadata)]:
            labels = (meta and meta.labels) or {}
            check(f"{where}.labels app.kubernetes.io/name is moslora",
                  labels.get("app.kubernetes.io/name") == "moslora", labels)
            check(f"{where}.labels app.kubernetes.io/component is sweep",
                  labels.get("app.kubernetes.io/component") == "sweep", labels)
        check("spec present", spec is not None)
        if spec is not None:
            check("spec.completion_mode is Indexed", spec.completion_mode == "Indexed", spec.completion_mode)
            check("spec.completions >= 1", (spec.completions or 0) >= 1, spec.completions)
            check("spec.parallelism >= 1", (spec.parallelism or 0) >= 1, spec.parallelism)
            pod = spec.template.spec
            check("restart_policy is Never", pod.restart_policy == "Never", pod.restart_policy)
            check("one container", len(pod.containers) == 1, len(pod.containers))
            c = pod.containers[0]
            check("container image set", bool(c.image), c.image)
            check("container command set", bool(c.command), c.command)
            if spec.backoff_limit_per_index is not None:
                check("backoffLimitPerIndex without backoffLimit", spec.backoff_limit is None, spec.backoff_limit)
            res = c.resources
            requests = (res and res.requests) or {}
            limits = (res and res.limits) or {}
            mounts = {m.mount_path: m for m in (c.volume_mounts or [])}
            volumes = {v.name: v for v in (pod.volumes or [])}
            for m in mounts.values():
                check(f"volume {m.name} of the mount at {m.mount_path} exists", m.name in volumes, sorted(volumes))

            want = {
                "name": job.metadata.name,
                "namespace": job.metadata.namespace,
                "completions": spec.completions,
                "parallelism": spec.parallelism,
                "command": c.command,
                "workdir": c.working_dir,
                "requests": requests,
                "limits": limits,
                "backoff_limit_per_index": spec.backoff_limit_per_index,
            }
            for key, found in want.items():
                if key in expected:
                    check(f"{key} is {expected[key]!r}", found == expected[key], found)
            if "claim" in expected:
                claim = expected["claim"]
                mount = mounts.get(c.working_dir)
                vol = mount and volumes.get(mount.name)
                found = vol and vol.persistent_volume_claim and vol.persistent_volume_claim.claim_name
                check(f"claim {claim!r} mounted at the working directory", found == claim, found)
            for key in expected:
                if key not in want and key != "claim":
                    problems.append(f"EXPECTED.json: unknown key {key!r}")

    if problems:
        print(f"{sys.argv[1]}: {len(problems)} problem(s):")
        for p in problems:
            print("  " + p)
        sys.exit(1)
    print(f"{sys.argv[1]}: a valid V1Job (kubernetes {kubernetes.__version__} client models)")


if __name__ == "__main__":
    main()
