"""The lock (constraints.txt) against setup.py, and every install path using it.

A fresh machine installs what PyPI serves that day unless each install is
pinned; these checks fail when a range in setup.py and the lock disagree or
when an install path forgets the lock.
"""
import ast
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _setup_requirements():
    tree = ast.parse((REPO / "setup.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "BEAM_VERSION":
                values[name] = node.value.value
            elif name in ("REQUIRED", "TEST"):
                values[name] = node.value
    reqs = []
    for name in ("REQUIRED", "TEST"):
        for elt in values[name].elts:
            if isinstance(elt, ast.JoinedStr):  # f"apache-beam[...]=={BEAM_VERSION}"
                text = "".join(
                    part.value if isinstance(part, ast.Constant) else values["BEAM_VERSION"]
                    for part in elt.values
                )
            else:
                text = elt.value
            reqs.append(Requirement(text))
    return reqs


def _lock():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_every_requirement_is_pinned_inside_its_range():
    pins = _lock()
    problems = []
    for req in _setup_requirements():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name}: not in constraints.txt")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: lock has {pinned}, setup.py wants {req.specifier}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_build_tools_are_pinned_for_pip_constraint():
    pins = _lock()
    assert {"setuptools", "wheel"} <= set(pins)


def test_every_install_path_uses_the_lock():
    makefile = (REPO / "Makefile").read_text()
    install = re.search(r"^install:\n\t(.+)$", makefile, re.M).group(1)
    assert "PIP_CONSTRAINT=$(CONSTRAINTS)" in install
    assert "CONSTRAINTS := $(CURDIR)/constraints.txt" in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"RUN PIP_CONSTRAINT=\S*constraints\.txt pip install \.", dockerfile)
    assert "constraints.txt" in re.search(r"^COPY setup\.py.*$", dockerfile, re.M).group(0)
    workflow = (REPO / ".github/workflows/deploy.yml").read_text()
    services = (REPO / "services/services.sh").read_text()
    for text in (workflow, services):
        installs = re.findall(r"^.*-m pip install.*$", text, re.M)
        assert installs
        for line in installs:
            assert "PIP_CONSTRAINT=" in line and "constraints.txt" in line, line
