"""Every command of the README's "Runnable modules" table, run in a cheap form,
so the README cannot drift from the code.

The table is read from README.md itself. Each command runs from the checkout
root, as a reader would type it, in a subprocess:

    python -m M ... / python P.py ...   with --help instead of its arguments
                                        (imports, option parsing), exit 0
    python -m beam_pipelines.generate   as written, with a small count and the
    python -m beam_pipelines.text_agent --generate   output in a temporary directory
    python -m runners.profiles          as written (it only prints)
    python flink/k8s/crd_to_jsonschema.py  on a one-version CRD written here
    bash S.sh up                        ``bash S.sh env`` (never ``up``: the
                                        services are shared) and ``up`` is one
                                        of the script's subcommands
    python benchmarks/<name>.py         every benchmarks/*.py with --help

Paths the monitoring configuration names as its tests must exist too.
"""
import os
import pathlib
import re
import shlex
import concurrent.futures
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # ~25 interpreters importing Beam
README = REPO / "README.md"


def _table_commands():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Runnable modules", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        commands.extend(re.findall(r"`([^`]+)`", cell))
    return commands


def _expand(command):
    if "<name>" in command:
        return [command.replace("<name>", path.stem)
                for path in sorted((REPO / "benchmarks").glob("*.py"))]
    return [command]


COMMANDS = [c for command in _table_commands() for c in _expand(command)]


def _env():
    env = dict(os.environ)
    # the venv's interpreter for "python" and "python3" in scripts
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = ""
    return env


def _run(argv, **kwargs):
    return subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300, **kwargs)


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget}
  versions:
    - name: v1
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer}}}
"""


def _cheap_form(command, tmp_path):
    """(argv, check) for one README command; check(result) asserts."""
    words = shlex.split(command)
    if words[0] == "bash":
        script = REPO / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        subcommand = words[2]
        source = script.read_text()
        assert re.search(rf"(^|[\s|(]){re.escape(subcommand)}\s*[|)]", source, re.M), \
            f"{words[1]} has no '{subcommand}' subcommand"
        return ["bash", str(script), "env"], lambda r: "export " in r.stdout
    assert words[0] == "python", command
    if words[1] == "-m":
        module, args = words[2], words[3:]
        head = [sys.executable, "-m", module]
    else:
        module, args = words[1], words[2:]
        assert (REPO / module).is_file(), f"{module} does not exist"
        head = [sys.executable, module]
    if module == "beam_pipelines.generate":
        out = tmp_path / "events.jsonl.gz"
        return head + ["--events=40", f"--output={out}"], lambda r: out.is_file()
    if module == "beam_pipelines.text_agent" and any(a.startswith("--generate") for a in args):
        out = tmp_path / "turns.jsonl.gz"
        return head + ["--generate=5", f"--output={out}"], lambda r: out.is_file()
    if module == "runners.profiles":
        return head + args, lambda r: "flink-local" in r.stdout
    if module.endswith("crd_to_jsonschema.py"):
        crd = tmp_path / "crd.yaml"
        crd.write_text(CRD)
        return head + [str(tmp_path / "schemas"), str(crd)], \
            lambda r: (tmp_path / "schemas" / "example.com" / "widget_v1.json").is_file()
    if module == "runners.submit":  # a subcommand first, then its options
        return head + [args[0], "--help"], lambda r: "usage" in r.stdout.lower()
    return head + ["--help"], lambda r: "usage" in r.stdout.lower()


def _runnable_modules():
    """Every module of the checkout with a ``__main__`` block (tests aside),
    as the command that runs it: ``python -m a.b`` or ``python dir/f.py``."""
    found = set()
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", "build") or relative.parts[0].startswith("."):
            continue
        if "__name__ == \"__main__\"" not in path.read_text(encoding="utf-8") \
                and path.name != "__main__.py":
            continue
        if (path.parent / "__init__.py").is_file() and relative.parts[0] != "benchmarks":
            parts = relative.with_suffix("").parts
            found.add("python -m " + ".".join(parts[:-1] if parts[-1] == "__main__" else parts))
        else:
            found.add(f"python {relative}")
    return found


def test_the_table_lists_every_runnable_module():
    listed = {" ".join(shlex.split(c)[:3]) if c.startswith("python -m") else
              " ".join(shlex.split(c)[:2]) for c in COMMANDS}
    missing = sorted(m for m in _runnable_modules() if m not in listed)
    assert not missing, f"README 'Runnable modules' lacks {missing}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every command's cheap form, a few at a time (each mostly waits on
    imports), and returns command -> (argv, check, CompletedProcess)."""
    forms = {c: _cheap_form(c, tmp_path_factory.mktemp("cmd")) for c in COMMANDS}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        done = {c: pool.submit(_run, argv) for c, (argv, _) in forms.items()}
        return {c: (forms[c][0], forms[c][1], f.result()) for c, f in done.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, results):
    argv, check, result = results[command]
    assert result.returncode == 0, f"{command!r} -> {argv}:\n{result.stderr[-2000:]}"
    assert check(result), f"{command!r} -> {argv}:\n{result.stdout[-2000:]}"


def test_test_files_named_by_the_monitoring_configuration_exist():
    named = set()
    for path in (REPO / "monitoring").rglob("*.y*ml"):
        named.update(re.findall(r"tests/[\w/]+\.py", path.read_text(encoding="utf-8")))
    assert named, "the monitoring configuration names its tests"
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing
