"""Whatever the file holds, loading gives a Config or ConfigInvalid, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchanged.config import Config, parse_config
from exchanged.errors import ConfigInvalid, ConfigProblem
from tests.config.helpers import BASE

KEYS = [
    "enabled", "profile_name", "server", "address", "sync_interval_minutes", "credentials", "username",
    "password", "password_file", "notifications", "email", "smtp", "sync", "users", "mailbox",
    "psa_resource", "settings", "psa", "connector", "url", "state", "control", "logging", "format",
    "past_days", "import_appointments", "use_ms_graph", "port", "security", "from",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["none", "sql", "autotask", "a@b.c", "10.0.0.1", "mail.x.y"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), children,
                        max_size=6),
    ),
    max_leaves=30,
)


def _check(text: str) -> None:
    try:
        result = parse_config(text, "/nonexistent/fuzz.yaml", credentials_dir="")
    except ConfigInvalid as exc:
        assert exc.problems, "ConfigInvalid must list at least one problem"
        for problem in exc.problems:
            assert isinstance(problem, ConfigProblem) and problem.message
            problem.render()
    else:
        assert isinstance(result, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents(doc: object) -> None:
    _check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*":-[]{}&*!|>'\"%@`#,? \n\tab1.", "\x00", "\ufeff"]),
               max_size=80))
def test_garbage_text(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(BASE.replace("{pw}", "/nonexistent/pw").splitlines(keepends=True)).flatmap(
    lambda line: st.tuples(st.just(line), st.text(max_size=12))))
def test_mutated_valid_document(mutation: tuple[str, str]) -> None:
    line, junk = mutation
    text = BASE.replace("{pw}", "/nonexistent/pw")
    _check(text.replace(line, line.rstrip("\n") + junk + "\n", 1))


def test_recursive_aliases() -> None:
    for text in ("a: &x [*x]\n", "users: &u [*u]\n", "server: &s {address: *s}\n", "&r {users: [*r]}\n"):
        _check(text)


def test_alias_bomb_is_cheap() -> None:
    """A "billion laughs" of aliases must not be walked out: each YAML node is looked at once."""
    levels = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 12):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join(levels) + "\nsync:\n  skip_categories: *a11\n"
    _check(text)


def test_deep_nesting() -> None:
    _check("x: " + "[" * 5000 + "]" * 5000)
    _check("users: " + "[" * 800 + "]" * 800)
