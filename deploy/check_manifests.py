"""Offline checks of Finestra's rendered manifests, Dockerfile and Grafana dashboard.

Run by scripts/deploy_check.sh inside its venv (PyYAML and `dockerfile` come from
scripts/requirements-deploy.txt); the schema validation itself is kubernetes-validate's. This adds
what a schema cannot see:

* no Secret with values is rendered; every Secret reference names `finestra-secrets` and a key
  listed in deploy/base/secret.example.env;
* every namespaced object lands in `finestra`; every ConfigMap reference resolves;
* every FINESTRA_* variable set by a manifest is one the code reads (catches typos);
* every Deployment: readiness + liveness probes on ports that match FINESTRA_GRPC_ADDR /
  FINESTRA_METRICS_ADDR, the security context (non-root 10001, read-only root filesystem, no
  privilege escalation, capabilities dropped, RuntimeDefault seccomp), requests and limits, a
  grace period longer than preStop + FINESTRA_SHUTDOWN_GRACE_SECS, scrape annotations;
* Services, HPAs and PDBs select or target an existing Deployment; PDB minAvailable stays below
  the HPA's minReplicas;
* every container's binary is one the Dockerfile ships; the Dockerfile parses (BuildKit's own
  parser) and runs as uid 10001;
* every metric the dashboard queries is one the code emits (or is announced).

Usage:
  check_manifests.py manifests OVERLAY RENDERED.yaml   -> one summary line, exit 1 on problems
  check_manifests.py dockerfile                         -> Dockerfile checks
  check_manifests.py dashboard                          -> Grafana dashboard checks
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "finestra"
SECRET_NAME = "finestra-secrets"
UID = 10001
# Metrics another change announced; the dashboard may show them before the code emits them.
ANNOUNCED_METRICS: set[str] = set()
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass",
    "CustomResourceDefinition", "PersistentVolume",
}


def code_files() -> list[Path]:
    files: list[Path] = []
    for top in ("services", "crates"):
        for path in sorted((ROOT / top).rglob("*.rs")):
            # The test kit's variables configure tests, not deployments.
            if "testkit" in path.parts or "target" in path.parts:
                continue
            files.append(path)
    return files


def declared_settings() -> dict[str, str]:
    """Every FINESTRA_* a service declares, with its default: docs/configuration.md, which is
    generated from the services' `settings!` declarations (a test keeps the two equal)."""
    row = re.compile(r"^\| `(FINESTRA_[A-Z0-9_]+)` \| (?:`([^`]*)`|\(unset\)) \|", re.M)
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    return {name: default or "" for name, default in row.findall(page)}


def code_env_vars() -> set[str]:
    """Every FINESTRA_* the binaries read: the declared settings, and the CLI's clap
    `env = "FINESTRA_..."` and other literal mentions as they are."""
    names: set[str] = set(declared_settings())
    literal = re.compile(r'"(FINESTRA_[A-Z0-9_]+)"')
    for path in code_files():
        names.update(literal.findall(path.read_text(encoding="utf-8")))
    return names


def code_default(name: str, fallback: int) -> int:
    """The integer default of FINESTRA_<name> as the code declares it."""
    default = declared_settings().get("FINESTRA_" + name, "")
    return int(default) if default.isdigit() else fallback


def code_metrics() -> set[str]:
    pattern = re.compile(r'(?:counter|histogram|gauge)!\s*\(\s*"([a-z0-9_]+)"', re.S)
    names: set[str] = set()
    for path in code_files():
        names.update(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def dockerfile_bins() -> set[str]:
    import dockerfile  # BuildKit's parser, from the venv

    for cmd in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if cmd.cmd.upper() == "ARG" and cmd.value and cmd.value[0].startswith("BINS="):
            return set(cmd.value[0].split("=", 1)[1].strip('"').split())
    return set()


def secret_keys() -> set[str]:
    keys = set()
    for line in (DEPLOY / "base" / "secret.example.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            keys.add(line.split("=", 1)[0])
    return keys


def port_of(addr: str) -> int | None:
    m = re.search(r":(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def selects(selector: dict, labels: dict) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


class Checker:
    def __init__(self, overlay: str, docs: list[dict]):
        self.overlay = overlay
        self.docs = docs
        self.problems: list[str] = []
        self.by_kind: dict[str, dict[str, dict]] = collections.defaultdict(dict)
        for d in docs:
            self.by_kind[d.get("kind", "?")][d.get("metadata", {}).get("name", "?")] = d
        self.known_env = code_env_vars()
        self.secret_keys = secret_keys()
        self.bins = dockerfile_bins()
        self.shutdown_default = code_default("SHUTDOWN_GRACE_SECS", 25)

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{self.overlay}: {where}: {what}")

    # --- everything -------------------------------------------------------------------------
    def run(self) -> None:
        for d in self.docs:
            kind, meta = d.get("kind"), d.get("metadata", {})
            where = f"{kind}/{meta.get('name')}"
            if kind not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
                self.fail(where, f"namespace is {meta.get('namespace')!r}, not {NAMESPACE!r}")
            if meta.get("labels", {}).get("app.kubernetes.io/part-of") != "finestra":
                self.fail(where, "missing label app.kubernetes.io/part-of=finestra")
            if kind == "Secret" and (d.get("data") or d.get("stringData")):
                self.fail(where, "a Secret with values is rendered; secrets are created out of band")
            if kind == "ConfigMap":
                for key in d.get("data", {}):
                    if key.startswith("FINESTRA_") and key not in self.known_env:
                        self.fail(where, f"{key} is not read by any binary (typo?)")
        for name, dep in self.by_kind["Deployment"].items():
            self.deployment(name, dep)
        for name, job in self.by_kind["Job"].items():
            self.pod_spec(f"Job/{name}", job["spec"]["template"]["spec"], workload=False)
        self.services()
        self.autoscalers()
        self.budgets()

    # --- pods ---------------------------------------------------------------------------------
    def container_env(self, where: str, c: dict, report: bool = True) -> dict[str, str]:
        env: dict[str, str] = {}
        fail = self.fail if report else (lambda where, what: None)
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                cm = self.by_kind["ConfigMap"].get(src["configMapRef"]["name"])
                if cm is None:
                    fail(where, f"envFrom ConfigMap {src['configMapRef']['name']} is not rendered")
                else:
                    env.update(cm.get("data", {}))
            elif "secretRef" in src:
                if src["secretRef"].get("name") != SECRET_NAME:
                    fail(where, f"envFrom Secret {src['secretRef'].get('name')} is not {SECRET_NAME}")
        for e in c.get("env", []):
            name = e["name"]
            if name.startswith("FINESTRA_") and name not in self.known_env:
                fail(where, f"{name} is not read by any binary (typo?)")
            ref = (e.get("valueFrom") or {})
            if "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                if s.get("name") != SECRET_NAME:
                    fail(where, f"{name} refers to Secret {s.get('name')}, not {SECRET_NAME}")
                if s.get("key") not in self.secret_keys:
                    fail(where, f"{name} refers to key {s.get('key')} missing from secret.example.env")
                env[name] = "<secret>"
            elif "configMapKeyRef" in ref:
                cm = self.by_kind["ConfigMap"].get(ref["configMapKeyRef"]["name"])
                key = ref["configMapKeyRef"]["key"]
                if cm is None or key not in cm.get("data", {}):
                    fail(where, f"{name} refers to a missing ConfigMap key {key}")
                else:
                    env[name] = cm["data"][key]
            else:
                env[name] = e.get("value", "")
        return env

    def container_security(self, where: str, c: dict) -> None:
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            self.fail(where, "securityContext.readOnlyRootFilesystem must be true")
        if sc.get("runAsNonRoot") is not True:
            self.fail(where, "securityContext.runAsNonRoot must be true")
        if sc.get("runAsUser", UID) != UID:
            self.fail(where, f"securityContext.runAsUser must be {UID}")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.fail(where, "securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            self.fail(where, "securityContext.capabilities.drop must contain ALL")
        if sc.get("privileged"):
            self.fail(where, "privileged container")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    self.fail(where, f"resources.{part}.{r} is not set")
        cmd = c.get("command") or []
        if not cmd:
            self.fail(where, "no command (the image has no entrypoint)")
        elif cmd[0] not in self.bins and cmd[0] not in {"sleep"}:
            self.fail(where, f"command {cmd[0]} is not a binary the Dockerfile ships ({sorted(self.bins)})")

    def pod_spec(self, where: str, spec: dict, workload: bool) -> None:
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            self.fail(where, "pod securityContext.runAsNonRoot must be true")
        if psc.get("runAsUser") != UID:
            self.fail(where, f"pod securityContext.runAsUser must be {UID}")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.fail(where, "pod seccompProfile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            self.fail(where, "automountServiceAccountToken should be false (no API access needed)")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cwhere = f"{where}/{c['name']}"
            self.container_security(cwhere, c)
            self.container_env(cwhere, c)

    def deployment(self, name: str, dep: dict) -> None:
        where = f"Deployment/{name}"
        spec = dep["spec"]
        tpl = spec["template"]
        if not selects(spec.get("selector"), tpl["metadata"].get("labels", {})):
            self.fail(where, "selector does not match the pod template's labels")
        pod = tpl["spec"]
        self.pod_spec(where, pod, workload=True)
        for c in pod["containers"]:
            cwhere = f"{where}/{c['name']}"
            env = self.container_env(cwhere, c, report=False)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            rp, lp = c.get("readinessProbe"), c.get("livenessProbe")
            if not rp:
                self.fail(cwhere, "no readinessProbe")
            if not lp:
                self.fail(cwhere, "no livenessProbe")
            grpc_port = port_of(env.get("FINESTRA_GRPC_ADDR", ""))
            metrics_port = port_of(env.get("FINESTRA_METRICS_ADDR", ""))
            if grpc_port is not None:
                # A Finestra service: gRPC health for readiness, /healthz for liveness.
                if ports.get("grpc") != grpc_port:
                    self.fail(cwhere, f"port grpc {ports.get('grpc')} != FINESTRA_GRPC_ADDR port {grpc_port}")
                if ports.get("metrics") != metrics_port:
                    self.fail(cwhere, f"port metrics {ports.get('metrics')} != FINESTRA_METRICS_ADDR port {metrics_port}")
                if rp and (rp.get("grpc") or {}).get("port") != grpc_port:
                    self.fail(cwhere, "readinessProbe must be the gRPC health check on the gRPC port")
                if lp:
                    hg = lp.get("httpGet") or {}
                    port = hg.get("port")
                    port = ports.get(port, port) if isinstance(port, str) else port
                    if hg.get("path") != "/healthz" or port != metrics_port:
                        self.fail(cwhere, "livenessProbe must be GET /healthz on the metrics port")
                ann = tpl["metadata"].get("annotations", {})
                if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(metrics_port):
                    self.fail(where, "prometheus.io scrape annotations missing or on the wrong port")
                http = env.get("FINESTRA_HTTP_ADDR")
                if http and ports.get("http") != port_of(http):
                    self.fail(cwhere, f"port http {ports.get('http')} != FINESTRA_HTTP_ADDR port")
                grace = int(env.get("FINESTRA_SHUTDOWN_GRACE_SECS") or self.shutdown_default)
                pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
                pause = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
                tgp = pod.get("terminationGracePeriodSeconds", 30)
                if tgp <= grace + pause:
                    self.fail(where, f"terminationGracePeriodSeconds {tgp} <= preStop {pause} + drain {grace}")

    # --- services, autoscalers, budgets ---------------------------------------------------------
    def deployments_selected(self, selector: dict) -> list[dict]:
        return [d for d in self.by_kind["Deployment"].values()
                if selects(selector, d["spec"]["template"]["metadata"].get("labels", {}))]

    def services(self) -> None:
        for name, svc in self.by_kind["Service"].items():
            where = f"Service/{name}"
            sel = {"matchLabels": svc["spec"].get("selector") or {}}
            deps = self.deployments_selected(sel)
            if not deps:
                self.fail(where, "selects no Deployment")
                continue
            names = {p.get("name") for d in deps for c in d["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            for p in svc["spec"].get("ports", []):
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                    self.fail(where, f"targetPort {p['targetPort']} is not a container port name")

    def autoscalers(self) -> None:
        for name, hpa in self.by_kind["HorizontalPodAutoscaler"].items():
            ref = hpa["spec"]["scaleTargetRef"]
            if ref.get("kind") != "Deployment" or ref.get("name") not in self.by_kind["Deployment"]:
                self.fail(f"HorizontalPodAutoscaler/{name}", f"targets a missing {ref.get('kind')}/{ref.get('name')}")
            if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
                self.fail(f"HorizontalPodAutoscaler/{name}", "minReplicas > maxReplicas")
            dep = self.by_kind["Deployment"].get(ref.get("name"))
            if dep is not None and "replicas" in dep["spec"]:
                self.fail(f"Deployment/{ref.get('name')}", "sets replicas although an HPA owns the count")

    def budgets(self) -> None:
        hpa_min = {h["spec"]["scaleTargetRef"]["name"]: h["spec"].get("minReplicas", 1)
                   for h in self.by_kind["HorizontalPodAutoscaler"].values()}
        for name, pdb in self.by_kind["PodDisruptionBudget"].items():
            where = f"PodDisruptionBudget/{name}"
            deps = self.deployments_selected(pdb["spec"].get("selector"))
            if not deps:
                self.fail(where, "selects no Deployment")
            ma = pdb["spec"].get("minAvailable")
            for d in deps:
                n = d["metadata"]["name"]
                floor = hpa_min.get(n, d["spec"].get("replicas", 1))
                if isinstance(ma, int) and ma >= floor:
                    self.fail(where, f"minAvailable {ma} >= {n}'s minimum of {floor} replicas: drains would block")


def check_manifests(overlay: str, rendered: str) -> int:
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    checker = Checker(overlay, docs)
    checker.run()
    for p in checker.problems:
        print(f"FAIL {p}")
    kinds = collections.Counter(d["kind"] for d in docs)
    summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    status = "ok" if not checker.problems else f"{len(checker.problems)} problems"
    print(f"{overlay}: {len(docs)} documents ({summary}); policy checks {status}")
    return 1 if checker.problems else 0


def check_dockerfile() -> int:
    import dockerfile

    problems = []
    try:
        cmds = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    except dockerfile.GoParseError as e:
        print(f"FAIL Dockerfile does not parse: {e}")
        return 1
    stages = [c for c in cmds if c.cmd.upper() == "FROM"]
    if len(stages) < 2:
        problems.append("expected a multi-stage build (builder + runtime)")
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in cmds
            if c.cmd.upper() == "ARG" and c.value and "=" in c.value[0]}
    images = [args.get(s.value[0].strip("${}"), s.value[0]) for s in stages]
    if not images or not images[0].startswith("rust:1.95-bookworm"):
        problems.append(f"builder image is {images[:1]}, expected rust:1.95-bookworm")
    if not images or images[-1] != "debian:bookworm-slim":
        problems.append(f"runtime image is {images[-1:]}, expected debian:bookworm-slim")
    last = max(i for i, c in enumerate(cmds) if c.cmd.upper() == "FROM")
    final = cmds[last:]
    users = [c.value[0] for c in final if c.cmd.upper() == "USER"]
    if not users or users[-1].split(":")[0] != str(UID):
        problems.append(f"the runtime stage must end as USER {UID} (found {users})")
    if not any(c.cmd.upper() == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final):
        problems.append("the runtime stage copies nothing from the builder")
    builds = [c for c in cmds if c.cmd.upper() == "RUN" and "cargo build --release --locked" in " ".join(c.value)]
    if not builds:
        problems.append("no `cargo build --release --locked` step")
    bins = dockerfile_bins()
    cargo_bins = set()
    for toml in list((ROOT / "services").glob("*/Cargo.toml")):
        text = toml.read_text()
        cargo_bins.update(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', text))
    missing = sorted(bins - cargo_bins)
    if missing:
        problems.append(f"BINS names binaries no Cargo.toml declares: {missing}")
    for p in problems:
        print(f"FAIL Dockerfile: {p}")
    print(f"Dockerfile: {len(cmds)} instructions, {len(stages)} stages ({' -> '.join(images)}), "
          f"ships {len(bins)} binaries; {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


def check_dashboard() -> int:
    path = DEPLOY / "grafana" / "finestra-dashboard.json"
    dash = json.loads(path.read_text())
    problems = []
    emitted = code_metrics()
    panels = []

    def walk(items):
        for p in items:
            panels.append(p)
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append("no `datasource` templating variable")
    used = set()
    queries = 0
    for p in panels:
        if p.get("type") == "row":
            continue
        ds = (p.get("datasource") or {}).get("uid")
        if ds != "${datasource}":
            problems.append(f"panel {p.get('title')!r} does not use ${{datasource}}")
        for t in p.get("targets", []):
            queries += 1
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {p.get('title')!r}: a query does not use ${{datasource}}")
            for m in re.findall(r"\b(finestra_[a-z0-9_]+)", t.get("expr", "")):
                base = re.sub(r"_(sum|count|bucket)$", "", m)
                name = base if base in emitted or base in ANNOUNCED_METRICS else m
                if name not in emitted and name not in ANNOUNCED_METRICS:
                    problems.append(f"panel {p.get('title')!r} queries {m}, which no code emits")
                used.add(name)
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    unscraped = {m for m in emitted if m.startswith("finestra_simulator_")}  # no /metrics there
    missing = sorted(emitted - unscraped - used)
    for p in problems:
        print(f"FAIL dashboard: {p}")
    for m in missing:
        print(f"NOTE dashboard: {m} is emitted but on no panel")
    print(f"dashboard: {len(panels)} panels, {queries} queries, {len(used)} metrics "
          f"({len(used & ANNOUNCED_METRICS)} announced, not emitted yet); {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "manifests":
        return check_manifests(argv[2], argv[3])
    if len(argv) == 2 and argv[1] == "dockerfile":
        return check_dockerfile()
    if len(argv) == 2 and argv[1] == "dashboard":
        return check_dashboard()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
