"""What installing exchanged pulls in: no test-only library at run time, and a clear word when the
demo or a test server is started without the ``testing`` extra."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_ONLY = {"trustme", "aiosmtpd", "pytest", "pytest-trio", "hypothesis", "ruff", "mypy"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_have_no_test_only_library_and_no_c_extension_to_build() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = names(project["dependencies"])
    assert not runtime & TEST_ONLY
    # systemd-python has no wheel: a compiler, Python headers and libsystemd-dev on every host
    assert "systemd-python" not in runtime
    extras = project["optional-dependencies"]
    assert {"trustme", "aiosmtpd"} <= names(extras["testing"])
    assert "exchanged[testing]" in extras["test"]


def run_without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Python with ``module`` made unimportable, as on a host without the testing extra."""
    prelude = f"import sys; sys.modules[{module!r}] = None; "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=120, check=False)


def test_demo_without_the_testing_extra_says_what_to_install(tmp_path: Path) -> None:
    done = run_without("trustme", f"from exchanged.cli import main; sys.exit(main(['demo', '--once', "
                                  f"'--dir', {str(tmp_path)!r}]))")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "exchanged demo: trustme is not installed" in done.stderr
    assert "pip install 'exchanged[testing]'" in done.stderr


def test_test_servers_without_the_testing_extra_say_what_to_install() -> None:
    for module, package in (("exchanged.testing.ews", "trustme"), ("exchanged.testing.autotask", "trustme"),
                            ("exchanged.testing.smtp", "aiosmtpd")):
        done = run_without(package, f"import runpy; runpy.run_module({module!r}, run_name='__main__')")
        assert done.returncode == 1, done.stderr
        # a developer's tool: the traceback stays, and its last line says what to do
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ModuleNotFoundError: {package} is not installed"), done.stderr
        assert "pip install 'exchanged[testing]'" in last
