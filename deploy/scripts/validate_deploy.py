#!/usr/bin/env python3
"""Checks the deployment files under deploy/ (run by validate-deploy.sh, in its venv).

- every YAML file: yamllint (deploy/scripts/yamllint.yml, strict); every JSON file parses;
- Kubernetes manifests: kubernetes-validate's bundled schemas (strict: unknown fields fail),
  for the oldest and the newest Kubernetes release we support; the kustomization lists every
  manifest; probes, ports, selectors, volumes, the ConfigMap's crmflow.toml and the CRMFLOW_*
  variables agree with each other and with crmflow's configuration keys;
- crmflow's configuration files (image default, compose, example): keys crmflow knows;
- docker-compose.yml: the Compose Specification's JSON schema (check-jsonschema's bundled copy),
  then what the schema cannot see: services depended on exist, mounted files and the build's
  Dockerfile exist, the crmflow config it mounts is valid;
- Dockerfile: the files it copies exist; the builder installs the packages install-deps.sh does;
  BuildKit's own parser and lint rules accept it (dockerfile-check, Go), and the build context that
  Dockerfile.dockerignore leaves holds the workspace's sources;
- Prometheus rules: the rule-file structure Prometheus loads (groups, rules, alert/record, expr,
  for, labels, annotations), every expr parses as PromQL; alerts.test.yml has a test of every
  alert's current expr; where promtool is installed, `promtool check rules` and `test rules`;
- Grafana dashboard: structure (unique panel ids, layout on the 24-column grid, a Prometheus
  datasource variable used by every panel, every $variable defined), every expr parses;
- every metric the rules and the dashboard query is one crmflow exports: the list is read from
  the metric registrations in crates/runtime and crates/http, so a renamed metric fails here.

Prints one line per check; exits 1 if any failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES = DEPLOY / "monitoring" / "alerts.yml"
RULE_TESTS = DEPLOY / "monitoring" / "alerts.test.yml"
DASHBOARDS = sorted((DEPLOY / "monitoring").glob("*.json"))
# Where crmflow registers its metrics (prometheus-client): status.rs today; the whole of both
# crates is read so that a registration moved to another file is still found.
METRIC_SOURCES = [ROOT / "crates" / "runtime" / "src", ROOT / "crates" / "http" / "src"]
CONFIG_RS = ROOT / "crates" / "runtime" / "src" / "config.rs"
INSTALL_DEPS = DEPLOY / "scripts" / "install-deps.sh"
YAMLLINT_CONFIG = DEPLOY / "scripts" / "yamllint.yml"

# Kubernetes releases the manifests must be valid for: the oldest we claim, and the newest
# kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

# Series Prometheus makes itself, which queries may use besides crmflow's.
PROMETHEUS_SERIES = {"up"}
# Grafana's built-in variables, and a value of the right kind to stand in for each.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str, problems: list[str] | None = None) -> bool:
        if ok:
            self.passed.append(what)
            print(f"ok    {what}")
        else:
            self.failed.append(what)
            print(f"FAIL  {what}")
            for problem in problems or []:
                print(f"        {problem}")
        return ok

    def problems(self, what: str, problems: list[str]) -> bool:
        return self.check(not problems, what, problems)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note  {text}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- what crmflow exports and accepts ---------------------------------------------------


@dataclass
class Metric:
    family: str
    kind: str  # counter, gauge, histogram
    where: str

    def series(self) -> list[str]:
        if self.kind == "counter":
            return [self.family + "_total"]
        if self.kind == "histogram":
            return [self.family + s for s in ("_bucket", "_sum", "_count")]
        return [self.family]


# counter(e, "name", …), counter1(…), gauge(&mut encoder, "name", …), gauge1(…): the helpers
# in status.rs that encode one metric family of that type.
HELPER_CALL = re.compile(r"\b(counter1?|gauge1?)\(\s*[^,()\"]+,\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", re.S)
# registry.register("name", "help", value): the type comes from the value's declaration.
REGISTER_CALL = re.compile(
    r"\.register(?:_with_unit)?\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"\s*,\s*\"(?:[^\"\\]|\\.)*\"\s*,\s*([^;]*?)\)\s*;",
    re.S,
)
FIELD_DECL = re.compile(r"\bpub\s+(\w+)\s*:\s*(?:\w+::)*(Histogram|Counter|Gauge|Family)\b")
TYPE_OF = {"Histogram": "histogram", "Counter": "counter", "Gauge": "gauge"}


def exported_metrics(report: Report) -> dict[str, Metric]:
    """Series name -> metric, read from the Rust source."""
    metrics: dict[str, Metric] = {}
    problems: list[str] = []
    files = [p for d in METRIC_SOURCES for p in sorted(d.rglob("*.rs"))]
    fields: dict[str, str] = {}
    literals: list[tuple[str, str]] = []
    for path in files:
        for m in FIELD_DECL.finditer(path.read_text()):
            fields[m.group(1)] = m.group(2)
    for path in files:
        text = path.read_text()
        # The test module (last in a file, by convention) asserts on metric text; it registers nothing.
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text, maxsplit=1)[0]

        def line(pos: int, path: Path = path, text: str = text) -> str:
            return f"{rel(path)}:{text.count(chr(10), 0, pos) + 1}"

        for m in HELPER_CALL.finditer(text):
            kind = "counter" if m.group(1).startswith("counter") else "gauge"
            metrics[m.group(2)] = Metric(m.group(2), kind, line(m.start()))
        for m in REGISTER_CALL.finditer(text):
            name, value = m.group(1), m.group(2)
            ident = re.findall(r"\w+", value)
            declared = next((fields[i] for i in reversed(ident) if i in fields), None)
            if declared not in TYPE_OF:
                problems.append(
                    f"{line(m.start())}: cannot tell the type of metric {name} (registered from `{value.strip()}`); "
                    "teach deploy/scripts/validate_deploy.py"
                )
                continue
            metrics[name] = Metric(name, TYPE_OF[declared], line(m.start()))
        literals += [(m.group(1), line(m.start())) for m in re.finditer(r"\"(crmflow_[a-zA-Z0-9_:]+)\"", text)]
    # A metric registered some other way would be missed, and a dashboard using it refused:
    # every "crmflow_…" string literal must be one of the registrations found.
    for name, where in literals:
        if name not in metrics:
            problems.append(
                f'{where}: "{name}" looks like a metric registered in a way '
                "deploy/scripts/validate_deploy.py does not know; teach it"
            )
    # A sanity floor: if the registrations changed shape, say so rather than pass on nothing.
    if len(metrics) < 10:
        problems.append(
            f"found only {len(metrics)} metric registrations in {', '.join(rel(d) for d in METRIC_SOURCES)}; "
            "has the way metrics are registered changed?"
        )
    report.problems(f"crmflow's metrics read from the source: {len(metrics)} families", problems)
    return {series: metric for metric in metrics.values() for series in metric.series()}


def config_keys() -> set[str]:
    """The top-level keys of crmflow's configuration: the fields of `pub struct Config`."""
    text = CONFIG_RS.read_text()
    body = re.search(r"pub struct Config \{(.*?)\n\}", text, re.S)
    if not body:
        raise SystemExit(f"validate-deploy: no `pub struct Config` in {rel(CONFIG_RS)}")
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))


# The librdkafka pass-through tables: their keys are librdkafka properties.
KAFKA_TABLES = {"kafka", "kafka_consumer", "kafka_producer"}


def check_crmflow_toml(text: str, keys: set[str], where: str) -> tuple[dict, list[str]]:
    problems = []
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return {}, [f"{where}: not TOML: {e}"]
    for key, value in config.items():
        if key not in keys:
            problems.append(f"{where}: `{key}` is not a crmflow configuration key (crmflow refuses unknown keys)")
        elif key in KAFKA_TABLES and not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{where}: [{key}] values must be strings (librdkafka properties)")
    return config, problems


def env_override_problem(name: str, keys: set[str]) -> str | None:
    """Why a CRMFLOW_* variable is not a configuration override crmflow accepts, if it is not."""
    if not name.startswith("CRMFLOW_"):
        return None
    path = name[len("CRMFLOW_") :]
    if path in ("LOG", "LOG_FORMAT"):
        return None
    parts = [p.lower() for p in path.split("__")]
    if parts[0] not in keys:
        return f"{name}: `{parts[0]}` is not a crmflow configuration key"
    if parts[0] in KAFKA_TABLES and len(parts) != 2:
        return f"{name}: librdkafka properties are CRMFLOW_{parts[0].upper()}__NAME_WITH_UNDERSCORES"
    return None


# --- PromQL -------------------------------------------------------------------------------


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects. Raises ValueError if it does not parse."""
    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
                return
            for m in node.matchers.matchers:
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                    names.add(m.value)
                    return
            unnamed.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    if unnamed:
        raise ValueError(f"selectors without a fixed metric name cannot be checked: {', '.join(unnamed)}")
    return names


def unknown_metrics(names: set[str], exported: dict[str, Metric]) -> list[str]:
    problems = []
    for name in sorted(names - PROMETHEUS_SERIES - exported.keys()):
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        hint = [s for s in exported if s.startswith(family)]
        problems.append(
            f"{name}: crmflow exports no such series" + (f" (it has {', '.join(sorted(hint))})" if hint else "")
        )
    return problems


# --- the checks ---------------------------------------------------------------------------


def check_syntax(report: Report) -> dict[Path, list]:
    yaml_files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    json_files = sorted(p for p in DEPLOY.rglob("*.json") if p.is_file())
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG)]
        + [str(p) for p in yaml_files],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    report.check(
        lint.returncode == 0,
        f"yamllint (strict, {rel(YAMLLINT_CONFIG)}): {len(yaml_files)} YAML files",
        (lint.stdout + lint.stderr).splitlines(),
    )
    docs: dict[Path, list] = {}
    problems = []
    for path in yaml_files:
        try:
            docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"{rel(path)}: {e}")
    for path in json_files:
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"{rel(path)}: {e}")
    report.problems(f"YAML and JSON parse: {len(yaml_files)} YAML, {len(json_files)} JSON files", problems)
    return docs


def check_kubernetes(report: Report, docs: dict[Path, list], keys: set[str]) -> None:
    kustomization = K8S / "kustomization.yaml"
    manifests = sorted(p for p in docs if p.parent == K8S and p != kustomization)
    resources = []
    for path in manifests:
        for doc in docs[path]:
            resources.append((path, doc))

    # Schemas.
    for version in K8S_VERSIONS:
        problems = []
        for path, doc in resources:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path) or "(top)"
                problems.append(
                    f"{rel(path)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {where}: {e.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{rel(path)}: {e}")
        kinds = ", ".join(f"{d.get('kind')}/{d.get('metadata', {}).get('name')}" for _, d in resources)
        report.problems(f"Kubernetes {version} schemas (strict), {len(resources)} resources: {kinds}", problems)

    # The kustomization: every manifest listed, every listed file there.
    problems = []
    k = (docs.get(kustomization) or [{}])[0]
    if k.get("kind") != "Kustomization" or not str(k.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        problems.append(f"{rel(kustomization)}: not a kustomize.config.k8s.io Kustomization")
    listed = set(k.get("resources") or [])
    for name in sorted(listed):
        if not (K8S / name).is_file():
            problems.append(f"{rel(kustomization)}: resource {name} does not exist")
    for path in manifests:
        if path.name not in listed:
            problems.append(f"{rel(path)} is not in {rel(kustomization)}'s resources")
    report.problems(f"kustomization lists the {len(manifests)} manifests", problems)

    # How the pieces fit together.
    by_kind: dict[str, list[dict]] = {}
    for _, doc in resources:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    problems = []
    sets = by_kind.get("StatefulSet", [])
    if len(sets) != 1:
        report.problems("StatefulSet wiring", [f"expected one StatefulSet, found {len(sets)}"])
        return
    sts = sets[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})

    def selects(selector: dict) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    if not selects(spec["selector"].get("matchLabels", {})):
        problems.append("StatefulSet selector does not match its pod template's labels")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    governing = services.get(spec.get("serviceName"))
    if governing is None:
        problems.append(f"serviceName {spec.get('serviceName')!r} is not a Service here")
    elif governing["spec"].get("clusterIP") != "None":
        problems.append(f"Service {governing['metadata']['name']} governs the StatefulSet but is not headless")
    for name, service in services.items():
        if not selects(service["spec"].get("selector", {})):
            problems.append(f"Service {name} does not select the StatefulSet's pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"].get("selector", {}).get("matchLabels", {})):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the pods")
    if not by_kind.get("PodDisruptionBudget"):
        problems.append("no PodDisruptionBudget")
    if pod.get("enableServiceLinks") is not False:
        problems.append(
            "enableServiceLinks must be false: Kubernetes would inject CRMFLOW_SERVICE_HOST etc. for a Service "
            "named crmflow, which crmflow reads as (unknown) configuration keys"
        )
    if not spec.get("volumeClaimTemplates"):
        problems.append("no volumeClaimTemplates: each instance needs its own volume for state_dir")

    containers = [c for c in pod["containers"] if c["name"] == "crmflow"]
    if len(containers) != 1:
        problems.append("no container named crmflow")
        report.problems("Kubernetes wiring", problems)
        return
    c = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problems.append(f"{probe}: missing, or not an httpGet")
            continue
        if get.get("path") != path:
            problems.append(f"{probe} asks {get.get('path')}, crmflow answers it on {path}")
        if get.get("port") not in ports and get.get("port") not in ports.values():
            problems.append(f"{probe} port {get.get('port')!r} is not a container port")
    annotations = spec["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        problems.append('pod template lacks the annotation prometheus.io/scrape: "true"')
    if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
        problems.append("prometheus.io/path is not /metrics")
    scrape_port = annotations.get("prometheus.io/port")
    if scrape_port is None or int(scrape_port) not in ports.values():
        problems.append(f"prometheus.io/port {scrape_port!r} is not a container port")

    # The config file from the ConfigMap, and the variables that override it.
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for name in mounts:
        if name not in volumes and name not in claims:
            problems.append(f"volumeMount {name} has no volume or claim template")
    args = c.get("args", []) + c.get("command", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    config: dict = {}
    maps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    if config_path is None:
        problems.append("crmflow is not started with --config")
    else:
        mount = next((m for m in mounts.values() if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        volume = volumes.get(mount["name"]) if mount else None
        cm = maps.get(((volume or {}).get("configMap") or {}).get("name"))
        file_name = config_path[len(mount["mountPath"].rstrip("/")) + 1 :] if mount else None
        if cm is None or file_name not in cm.get("data", {}):
            problems.append(f"--config {config_path} is not a file of a ConfigMap defined here")
        else:
            config, toml_problems = check_crmflow_toml(
                cm["data"][file_name], keys, f"ConfigMap {cm['metadata']['name']}/{file_name}"
            )
            problems += toml_problems
    env = {e["name"]: e for e in c.get("env", [])}
    for name in env:
        problem = env_override_problem(name, keys)
        if problem:
            problems.append(problem)
    if "CRMFLOW_INSTANCE_ID" not in env and "instance_id" in config:
        problems.append("instance_id is set in the ConfigMap: every replica would share one transactional id")
    state_dir = config.get("state_dir")
    state_mount = next((m for m in mounts.values() if m["name"] in claims), None)
    if state_dir and (state_mount is None or not str(state_dir).startswith(state_mount["mountPath"])):
        problems.append(f"state_dir {state_dir} is not on the claim template's volume")
    listen = env.get("CRMFLOW_HTTP_LISTEN", {}).get("value") or config.get("http_listen")
    if not listen:
        problems.append("http_listen is not set: no health, readiness or metrics endpoints")
    elif int(listen.rsplit(":", 1)[1]) not in ports.values():
        problems.append(f"http_listen {listen} is not on a container port")
    advertised = env.get("CRMFLOW_HTTP_ADVERTISED", {}).get("value", "")
    if governing is not None and f".{governing['metadata']['name']}." not in advertised:
        problems.append(f"CRMFLOW_HTTP_ADVERTISED {advertised!r} is not the pod's name under the headless Service")
    report.problems(
        "Kubernetes wiring: selectors, headless Service, probes /healthz and /readyz, scrape annotations, "
        "ConfigMap crmflow.toml keys, CRMFLOW_* variables, state_dir on the claim",
        problems,
    )


def check_compose(report: Report, docs: dict[Path, list], keys: set[str]) -> None:
    schema = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    report.check(
        schema.returncode == 0,
        f"{rel(COMPOSE)}: Compose Specification schema",
        (schema.stdout + schema.stderr).strip().splitlines(),
    )
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        run = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT
        )
        report.check(run.returncode == 0, f"{rel(COMPOSE)}: docker compose config", run.stderr.splitlines())
    else:
        report.note("docker compose is not installed here: the compose file was checked by its schema only")

    compose = docs[COMPOSE][0]
    services = compose.get("services", {})
    base = COMPOSE.parent
    problems = []
    for name, service in services.items():
        for dep in service.get("depends_on") or []:
            if dep not in services:
                problems.append(f"service {name} depends on {dep}, which is not a service")
        build = service.get("build")
        if build:
            context = (base / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"service {name}: {dockerfile} does not exist")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                path = (base / source).resolve()
                if not path.exists():
                    problems.append(f"service {name} mounts {source}, which does not exist")
                elif path.suffix == ".toml":
                    _, toml_problems = check_crmflow_toml(path.read_text(), keys, rel(path))
                    problems += toml_problems
            elif source and source not in (compose.get("volumes") or {}):
                problems.append(f"service {name} mounts volume {source}, which is not declared")
        env = service.get("environment") or {}
        names = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for var in names:
            problem = env_override_problem(var, keys)
            if problem:
                problems.append(f"service {name}: {problem}")
    report.problems(
        f"{rel(COMPOSE)}: services {', '.join(services)}: dependencies, builds, mounts, crmflow config", problems
    )


def check_config_files(report: Report, keys: set[str]) -> None:
    """The crmflow configuration files deploy/ ships (the image's default, compose's, the example)."""
    paths = sorted(p for p in DEPLOY.rglob("*.toml") if p.is_file() and "kafka" not in p.relative_to(DEPLOY).parts)
    problems = []
    for path in paths:
        problems += check_crmflow_toml(path.read_text(), keys, rel(path))[1]
    report.problems(f"crmflow config files, keys known to config.rs: {', '.join(rel(p) for p in paths)}", problems)


def check_dockerfile(report: Report) -> None:
    text = DOCKERFILE.read_text()
    problems = []
    # Files the build copies from the context (not from another stage).
    for m in re.finditer(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)$", text, re.M):
        parts = m.group(1).split()
        for source in parts[:-1]:
            if source != "." and not (ROOT / source).exists():
                problems.append(f"COPY {source}: not in the build context (the repository root)")
    for needed in ('ENTRYPOINT ["crmflow"]', "VOLUME", "USER", "EXPOSE"):
        if needed not in text:
            problems.append(f"no {needed}")
    if len(re.findall(r"^FROM\s", text, re.M)) < 2:
        problems.append("not a multi-stage build")
    # The builder's apt-get list and install-deps.sh's must not drift apart.
    packages = set(re.findall(r"missing\+=\(([\w.+-]+)\)", INSTALL_DEPS.read_text()))
    builder = text.split("AS builder", 1)[-1].split("\nFROM ", 1)[0]
    for package in sorted(packages):
        if not re.search(rf"(?<![\w.-]){re.escape(package)}(?![\w.-])", builder):
            problems.append(f"the builder stage does not install {package}, which {rel(INSTALL_DEPS)} installs")
    ignore = DOCKERFILE.parent / (DOCKERFILE.name + ".dockerignore")
    if not ignore.is_file():
        problems.append(f"no {rel(ignore)}")
    report.problems(f"{rel(DOCKERFILE)}: stages, copied files, build packages as in install-deps.sh", problems)

    # BuildKit's own parser and linter, and the context its .dockerignore leaves (validate-deploy.sh
    # builds the tool; DOCKERFILE_CHECK is empty where Go is missing or the build failed).
    tool = os.environ.get("DOCKERFILE_CHECK")
    if not tool:
        report.note(
            "no dockerfile-check (Go missing, or it did not build): BuildKit's lint and the context check skipped"
        )
        return
    required = ["Cargo.toml", "Cargo.lock", "crates", "schemas"]
    run = subprocess.run(
        [tool, "-context", ".", "-dockerfile", rel(DOCKERFILE)] + [a for r in required for a in ("-require", r)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = (run.stdout + run.stderr).strip().splitlines()
    summary = lines[-1] if run.returncode == 0 and lines else "build context"
    report.check(
        run.returncode == 0,
        f"{rel(DOCKERFILE)}: BuildKit's parser and lint rules (docker build --check); {summary} "
        f"after {rel(ignore)}, holding {', '.join(required)}",
        lines,
    )


DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")


def check_rules(report: Report, docs: dict[Path, list], exported: dict[str, Metric]) -> set[str]:
    used: set[str] = set()
    problems = []
    doc = (docs.get(RULES) or [None])[0]
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
        report.problems(f"{rel(RULES)}: rule file structure", ["the top level must be exactly `groups:`, a list"])
        return used
    alerts = 0
    group_names = set()
    for g, group in enumerate(doc["groups"]):
        where = f"groups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
            problems.append(f"{where}: a group needs a name")
            continue
        extra = set(group) - {"name", "interval", "query_offset", "limit", "rules", "labels"}
        if extra:
            problems.append(f"{where}: unknown fields {sorted(extra)}")
        if group["name"] in group_names:
            problems.append(f"{where}: group name {group['name']} repeats")
        group_names.add(group["name"])
        rule_names = set()
        for r, rule in enumerate(group.get("rules") or []):
            where = f"group {group['name']} rules[{r}]"
            if not isinstance(rule, dict):
                problems.append(f"{where}: not a mapping")
                continue
            kind = [k for k in ("alert", "record") if k in rule]
            if len(kind) != 1:
                problems.append(f"{where}: needs exactly one of alert and record")
                continue
            name = rule[kind[0]]
            where = f"{kind[0]} {name}"
            allowed = (
                {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
                if kind == ["alert"]
                else {"record", "expr", "labels"}
            )
            if set(rule) - allowed:
                problems.append(f"{where}: unknown fields {sorted(set(rule) - allowed)}")
            if kind == ["alert"]:
                alerts += 1
                if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", str(name)):
                    problems.append(f"{where}: not a valid alert name")
                if name in rule_names:
                    problems.append(f"{where}: repeated in its group")
                rule_names.add(name)
                for key in ("summary", "description"):
                    if not (rule.get("annotations") or {}).get(key):
                        problems.append(f"{where}: no {key} annotation")
            for key in ("for", "keep_firing_for"):
                if key in rule and not (isinstance(rule[key], str) and DURATION.match(rule[key]) and rule[key]):
                    problems.append(f"{where}: {key}: {rule[key]!r} is not a Prometheus duration")
            for key in ("labels", "annotations"):
                value = rule.get(key, {})
                if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    problems.append(f"{where}: {key} must map names to strings")
                    continue
                for k, v in value.items():
                    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k):
                        problems.append(f"{where}: {key} name {k!r} is not valid")
                    if v.count("{{") != v.count("}}"):
                        problems.append(f"{where}: {key}.{k}: unbalanced {{{{ }}}} template")
            if "severity" not in (rule.get("labels") or {}) and kind == ["alert"]:
                problems.append(f"{where}: no severity label")
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: no expr")
                continue
            try:
                names = promql_metrics(expr)
            except ValueError as e:
                problems.append(f"{where}: expr does not parse: {e}")
                continue
            used |= names
            problems += [f"{where}: {p}" for p in unknown_metrics(names, exported)]
    report.problems(f"{rel(RULES)}: {alerts} alerts: structure, PromQL, metric names", problems)

    used |= check_rule_tests(report, docs, doc, exported)

    promtool = shutil.which("promtool")
    if promtool:
        for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
            run = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT)
            report.check(
                run.returncode == 0,
                f"promtool {' '.join(args[:2])} {rel(Path(args[2]))}",
                (run.stdout + run.stderr).splitlines(),
            )
    else:
        report.note(
            "promtool is not on PATH: the rules were checked structurally and their tests were not run "
            f"(promtool test rules {rel(RULE_TESTS)} runs them)"
        )
    return used


def canonical(expr: str) -> str:
    return str(promql_parser.parse(expr))


def check_rule_tests(report: Report, docs: dict[Path, list], rules: dict, exported: dict[str, Metric]) -> set[str]:
    """alerts.test.yml (promtool's unit-test format) has a test of every alert's current expr."""
    used: set[str] = set()
    problems = []
    doc = (docs.get(RULE_TESTS) or [None])[0]
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        report.problems(f"{rel(RULE_TESTS)}: tests of every alert", ["no `tests:` list"])
        return used
    if RULES.name not in (doc.get("rule_files") or []):
        problems.append(f"rule_files does not name {RULES.name}")
    tested: set[str] = set()
    for i, test in enumerate(doc["tests"]):
        where = f"tests[{i}] {test.get('name', '')!r}"
        series = test.get("input_series") or []
        if not series:
            problems.append(f"{where}: no input_series")
        for s in series:
            try:
                names = promql_metrics(str(s.get("series", "")))
            except ValueError as e:
                problems.append(f"{where}: series {s.get('series')!r}: {e}")
                continue
            used |= names
            problems += [f"{where}: {p}" for p in unknown_metrics(names, exported)]
            if not isinstance(s.get("values"), str):
                problems.append(f"{where}: series {s.get('series')!r} has no values")
        for t in test.get("promql_expr_test") or []:
            try:
                tested.add(canonical(str(t.get("expr", ""))))
            except ValueError as e:
                problems.append(f"{where}: expr does not parse: {e}")
            if not DURATION.match(str(t.get("eval_time", ""))) or not isinstance(t.get("exp_samples"), list):
                problems.append(f"{where}: each promql_expr_test needs eval_time and exp_samples")
        if not test.get("promql_expr_test") and not test.get("alert_rule_test"):
            problems.append(f"{where}: tests nothing")
    alerts = [r for g in rules.get("groups", []) for r in g.get("rules") or [] if isinstance(r, dict) and "alert" in r]
    for rule in alerts:
        try:
            if canonical(rule.get("expr", "")) not in tested:
                problems.append(f"alert {rule['alert']}: no test evaluates its current expr")
        except ValueError:
            pass  # reported with the rules
    report.problems(f"{rel(RULE_TESTS)}: {len(doc['tests'])} tests, every alert's expr tested", problems)
    return used


VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|(\w+))")


def substitute(expr: str, variables: set[str], problems: list[str], where: str) -> str:
    """Grafana's variables replaced by values PromQL accepts."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in variables:
            problems.append(f"{where}: ${name} is not a variable of the dashboard")
        return ".*"

    return VARIABLE.sub(value, expr)


def check_dashboard(report: Report, path: Path, exported: dict[str, Metric]) -> set[str]:
    used: set[str] = set()
    dash = json.loads(path.read_text())
    problems = []
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"no top-level {key}")
    templating = dash.get("templating", {}).get("list", [])
    variables = {v.get("name") for v in templating}
    sources = [v for v in templating if v.get("type") == "datasource"]
    if not any(v.get("query") == "prometheus" for v in sources):
        problems.append("no datasource variable of type prometheus")
    source_uid = f"${{{sources[0]['name']}}}" if sources else None
    for v in templating:
        if v.get("type") == "query":
            query = v.get("query")
            query = query.get("query", "") if isinstance(query, dict) else query or ""
            if (v.get("datasource") or {}).get("uid") != source_uid:
                problems.append(f"variable {v.get('name')}: not on the datasource variable")
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query, re.S)
            if not m:
                problems.append(f"variable {v.get('name')}: query {query!r} is not label_values(selector, label)")
                continue
            try:
                names = promql_metrics(substitute(m.group(1), variables, problems, f"variable {v.get('name')}"))
            except ValueError as e:
                problems.append(f"variable {v.get('name')}: {e}")
                continue
            used |= names
            problems += [f"variable {v.get('name')}: {p}" for p in unknown_metrics(names, exported)]

    panels = []
    for panel in dash.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
    ids = [p.get("id") for p in panels]
    for i in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problems.append(f"panel id {i} repeats")
    cells: dict[tuple[int, int], str] = {}
    exprs = 0
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        if not panel.get("title") or not panel.get("type"):
            problems.append(f"{where}: needs a type and a title")
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: gridPos needs integer x, y, w, h")
        elif grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: outside the 24-column grid")
        else:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        problems.append(f"{where}: overlaps {cells[(x, y)]}")
                        break
                    cells[(x, y)] = where
                else:
                    continue
                break
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != source_uid:
            problems.append(f"{where}: datasource is not the {source_uid} variable")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: repeated refId")
        for t in targets:
            expr = t.get("expr")
            if not expr:
                problems.append(f"{where}: query {t.get('refId')} has no expr")
                continue
            exprs += 1
            try:
                names = promql_metrics(substitute(expr, variables, problems, where))
            except ValueError as e:
                problems.append(f"{where}: {t.get('refId')} does not parse: {e}")
                continue
            used |= names
            problems += [f"{where}: {p}" for p in unknown_metrics(names, exported)]
    report.problems(
        f"{rel(path)}: {len(panels)} panels, {exprs} queries: structure, datasource variable, PromQL, metric names",
        problems,
    )
    return used


def guarded(report: Report, what: str, check, *args, default=None):
    """Runs one check; a file so malformed that the check itself trips is that check's failure."""
    try:
        return check(report, *args)
    except Exception as e:  # noqa: BLE001 - any crash is a finding about the files
        report.check(False, what, [f"the check could not finish: {type(e).__name__}: {e}"])
        return default


def main() -> int:
    os.chdir(ROOT)
    report = Report()
    exported = exported_metrics(report)
    keys = config_keys()
    docs = check_syntax(report)
    guarded(report, "Kubernetes manifests", check_kubernetes, docs, keys)
    guarded(report, rel(COMPOSE), check_compose, docs, keys)
    guarded(report, "crmflow config files", check_config_files, keys)
    guarded(report, rel(DOCKERFILE), check_dockerfile)
    used = guarded(report, rel(RULES), check_rules, docs, exported, default=set())
    if not DASHBOARDS:
        report.check(False, "a Grafana dashboard in deploy/monitoring/", ["no *.json there"])
    for path in DASHBOARDS:
        used |= guarded(report, rel(path), check_dashboard, path, exported, default=set())
    families = {m.family for s, m in exported.items() if s in used}
    unused = sorted({m.family for m in exported.values()} - families)
    if unused:
        report.note(f"exported but on no dashboard or alert: {', '.join(unused)}")
    if report.failed:
        print(f"validate-deploy: {len(report.failed)} of {len(report.passed) + len(report.failed)} checks FAILED")
        return 1
    print(f"validate-deploy: all {len(report.passed)} checks of deploy/ passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
