"""The man pages and bash completion come from the parsers behind --help and from docs/CONFIG.md.

debian/rules runs packaging/manpages.py at build time, so the pages cannot drift from the code;
these tests check that the generator really carries everything over (every command, every option,
every config key), that man renders the pages without a warning, and that the completion completes.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from exchanged.cli import build_parser as exchanged_parser
from exchanged.ctl import build_parser as exchangectl_parser

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manpages", ROOT / "packaging" / "manpages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    generator().generate(out)
    return out


def render(page: Path) -> str:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed (Debian: apt-get install man-db)")
    done = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True, timeout=60,
                          env={"MANWIDTH": "200", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"man warns about {page.name}:\n{done.stderr}"
    return done.stdout


def section(text: str, title: str, level: int) -> str:
    """The rendered text of one section (level 0: NAME, OPTIONS...) or sub-section (level 3)."""
    lines = text.splitlines()
    head = " " * level + title
    start = lines.index(head) + 1
    end = next((n for n in range(start, len(lines))
                if lines[n] and not lines[n].startswith(" " * (level + 1))), len(lines))
    return "\n".join(lines[start:end])


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


@pytest.mark.parametrize(("page", "build"), [("exchanged.8", exchanged_parser),
                                             ("exchangectl.1", exchangectl_parser)])
def test_command_pages_have_every_command_and_option(generated: Path, page: str, build: object) -> None:
    text = render(generated / page)
    parser = build()  # type: ignore[operator]
    top = option_strings(parser)
    options = section(text, "OPTIONS", 0)
    for opt in top:
        assert re.search(rf"^ +{re.escape(opt)}\b", options, re.M), f"{page} OPTIONS: {opt} is missing"
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subs._choices_actions}
    commands = section(text, "COMMANDS", 0)
    for name, sub in subs.choices.items():
        body = section(commands, name, 3)
        assert " ".join(str(helps[name]).split()) in " ".join(body.split()), f"{page} {name}: help text"
        for opt in option_strings(sub) - top:  # the common ones are described once, under OPTIONS
            assert re.search(rf"^ +{re.escape(opt)}\b", body, re.M), f"{page} {name}: {opt} is missing"
        for positional in (a for a in sub._actions if not a.option_strings):
            assert (positional.metavar or positional.dest.upper()) in body


def test_the_config_page_has_every_key_of_config_md(generated: Path) -> None:
    text = " ".join(render(generated / "exchanged.yaml.5").split())
    keys = re.findall(r"^\| `([^`]+)`", (ROOT / "docs" / "CONFIG.md").read_text(), re.M)
    assert len(keys) > 20
    for key in keys:
        assert key in text, f"exchanged.yaml(5) lacks {key}"
    for heading in re.findall(r"^## (.+)$", (ROOT / "docs" / "CONFIG.md").read_text(), re.M):
        assert heading.upper() in text


def test_pages_name_each_other(generated: Path) -> None:
    assert "exchangectl(1)" in render(generated / "exchanged.8")
    assert "exchanged.yaml(5)" in render(generated / "exchangectl.1")
    assert "exchanged(8)" in render(generated / "exchanged.yaml.5")


def complete(script: Path, words: list[str]) -> list[str]:
    bash = shutil.which("bash")
    assert bash is not None
    line = " ".join(words)
    program = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               f"_{words[0]}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    done = subprocess.run([bash, "--norc", "-c", program], capture_output=True, text=True, timeout=30,
                          check=True)
    return done.stdout.split()


def test_bash_completion_completes_commands_and_their_options(generated: Path) -> None:
    ctl = generated / "completion" / "exchangectl"
    assert complete(ctl, ["exchangectl", "sy"]) == ["sync"]
    sync_options = set(complete(ctl, ["exchangectl", "sync", "--"]))
    assert sync_options >= {"--wait", "--full", "--allow-deletes", "--json"}
    assert set(complete(ctl, ["exchangectl", "reload", "--w"])) == {"--wait"}
    daemon = generated / "completion" / "exchanged"
    assert set(complete(daemon, ["exchanged", ""])) >= {"run", "check-config", "demo", "--version"}
    assert set(complete(daemon, ["exchanged", "check-config", "--c"])) == {"--config", "--connect"}
