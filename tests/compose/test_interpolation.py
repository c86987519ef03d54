"""Interpolation (${V}, defaults, required values, $$, nesting), .env files
and their precedence, --env-file, and env_file: on services."""

from __future__ import annotations

import pytest

from api.compose.diagnostics import Report
from api.compose.interpolation import InterpolationError, parse_dotenv, substitute

from .util import errors, load_text, service, warnings

ENV = {"A": "a", "EMPTY": "", "N": "3"}


@pytest.mark.parametrize("template, out", [
    ("plain", "plain"),
    ("${A}", "a"), ("$A", "a"), ("x${A}y", "xay"), ("$A.b", "a.b"), ("$A-b", "a-b"),
    ("${UNSET}", ""), ("$UNSET", ""),
    ("${A:-d}", "a"), ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"),
    ("${A-d}", "a"), ("${UNSET-d}", "d"), ("${EMPTY-d}", ""),
    ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${UNSET:+alt}", ""),
    ("${A+alt}", "alt"), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${A:?err}", "a"), ("${EMPTY?err}", ""),
    ("$$", "$"), ("$$A", "$A"), ("$${A}", "${A}"), ("a$$$A", "a$a"),
    ("${UNSET:-${A}}", "a"), ("${UNSET:-${ALSO:-x}}", "x"), ("${UNSET:-pre-${A}-post}", "pre-a-post"),
    ("${A:-${MISSING:?not evaluated}}", "a"),  # defaults are only expanded when used
    ("${UNSET:-$$}", "$"), ("${UNSET:-a b}", "a b"), ("${UNSET:-}", ""),
])
def test_substitute(template: str, out: str) -> None:
    assert substitute(template, ENV.get) == out


@pytest.mark.parametrize("template, message", [
    ("${UNSET:?give it}", "required variable UNSET is missing a value: give it"),
    ("${EMPTY:?}", "required variable EMPTY is missing a value"),
    ("${UNSET?}", "required variable UNSET is missing a value"),
    ("${UNSET:-${B:?inner}}", "required variable B is missing a value: inner"),
    ("${UNSET:?need ${A}}", "required variable UNSET is missing a value: need a"),
    ("${A", "invalid interpolation in '${A': \"${\" is not closed (write $$ for a literal $)"),
    ("cost $5", "invalid interpolation in 'cost $5': \"$5\" is not a variable (write $$ for a literal $)"),
    ("end $", "invalid interpolation in 'end $': a lone $ at the end (write $$ for a literal $)"),
    ("${A/x}", "invalid interpolation in '${A/x}': unknown operator in \"${A/x}\" (known: :- - :? ? :+ +)"),
    ("${}", "invalid interpolation in '${}': \"${}\" does not start with a variable name"),
])
def test_substitute_errors(template: str, message: str) -> None:
    with pytest.raises(InterpolationError) as e:
        substitute(template, ENV.get)
    assert str(e.value) == message


def test_values_are_interpolated_not_keys() -> None:
    web = service("""\
        environment:
          $KEY: ${A}
          B: ${N}
        labels:
          ${A}: x
        """, environ={"A": "a", "N": "3", "KEY": "k"})
    assert web["environment"] == {"$KEY": "a", "B": "3"}
    assert web["labels"] == {"${A}": "x"}


def test_interpolated_values_take_the_field_type() -> None:
    loaded = load_text("""\
        services:
          web:
            image: img:${TAG:-1.0}
            read_only: ${RO}
            deploy:
              replicas: ${N}
        """, environ={"N": "3", "RO": "true"})
    web = loaded.project.services["web"]
    assert (web.image, web.read_only, web.deploy.replicas) == ("img:1.0", True, 3)  # type: ignore[union-attr]


def test_a_missing_required_variable_is_an_error_at_its_place() -> None:
    assert errors("""\
        services:
          web:
            image: nginx:${TAG:?set TAG to the release}
            deploy:
              replicas: ${REPLICAS:?}
        """) == [
        "stack.yml:3:12: services.web.image: required variable TAG is missing a value: set TAG to the release",
        "stack.yml:5:17: services.web.deploy.replicas: required variable REPLICAS is missing a value",
    ]


def test_an_unset_variable_is_a_warning() -> None:
    assert warnings("services:\n  web:\n    image: img${SUFFIX}\n") == [
        "stack.yml:3:12: services.web.image: variable SUFFIX is not set: using an empty string"]


def test_dollar_dollar_is_a_literal_dollar() -> None:
    web = load_text("services:\n  web:\n    image: img\n    command: echo $$HOME and $${X}\n").project.services["web"]
    assert web.command == ("echo", "$HOME", "and", "${X}")
    # and stack config writes it back escaped
    assert service("command: echo $$HOME and $${X}\n")["command"] == ["echo", "$$HOME", "and", "$${X}"]


# -- .env ---------------------------------------------------------------------------------


def test_parse_dotenv_syntax() -> None:
    r = Report()
    text = """\
# a comment
export A=1
B = spaced   # a comment
C="double \\"quoted\\" $A\\n"
D='single $A # kept'
E=
F="multi
line"
G=${A}-${B}
H=a#b
I
J=$$lit
"""
    got = parse_dotenv(text, ".env", {"I": "from-env"}.get, r)
    assert not r.errors
    assert got == {"A": "1", "B": "spaced", "C": 'double "quoted" 1\n', "D": "single $A # kept", "E": "",
                   "F": "multi\nline", "G": "1-spaced", "H": "a#b", "I": "from-env", "J": "$lit"}


def test_parse_dotenv_errors_name_file_line_col() -> None:
    r = Report()
    parse_dotenv("A=1\n  bad line\nC='open\n", "/srv/app/.env", {}.get, r)
    assert [str(e) for e in r.errors] == [
        "/srv/app/.env:2:6: expected = after 'bad', got 'l'",
        "/srv/app/.env:3:3: C: the ' quote is not closed",
    ]


TEXT = "services:\n  web:\n    image: img:${TAG}\n    environment:\n      - WHO=${WHO:-nobody}\n"


def test_dot_env_beside_the_first_file() -> None:
    loaded = load_text(TEXT, files={"/srv/app/.env": "TAG=1.2\nWHO=dotenv\n"})
    web = loaded.project.services["web"]
    assert web.image == "img:1.2" and web.environment == {"WHO": "dotenv"}
    assert loaded.environment == {"TAG": "1.2", "WHO": "dotenv"}


def test_the_process_environment_wins_over_dot_env() -> None:
    web = load_text(TEXT, environ={"WHO": "process"}, files={"/srv/app/.env": "TAG=1.2\nWHO=dotenv\n"}
                    ).project.services["web"]
    assert web.image == "img:1.2" and web.environment == {"WHO": "process"}


def test_dot_env_values_see_the_process_environment() -> None:
    web = load_text(TEXT, environ={"BASE": "p"}, files={"/srv/app/.env": "BASE=d\nTAG=${BASE}-1\n"}
                    ).project.services["web"]
    assert web.image == "img:p-1"


def test_env_files_replace_dot_env_and_later_ones_win() -> None:
    files = {"/srv/app/.env": "TAG=dotenv\n", "/etc/a.env": "TAG=a\nWHO=a\n", "/etc/b.env": "WHO=b\n"}
    web = load_text(TEXT, files=files, env_files=["/etc/a.env", "/etc/b.env"]).project.services["web"]
    assert web.image == "img:a" and web.environment == {"WHO": "b"}


def test_a_missing_env_file_is_an_error() -> None:
    assert errors(TEXT, env_files=["/etc/none.env"]) == ["env file /etc/none.env does not exist"]


# -- env_file: on services --------------------------------------------------------------


def test_env_file_is_relative_to_its_compose_file_and_below_environment() -> None:
    web = service("""\
        env_file: [./common.env, {path: ./missing.env, required: false}]
        environment:
          B: from-environment
        """, files={"/srv/app/common.env": "A=1\nB=from-file\n"})
    assert web["environment"] == {"A": "1", "B": "from-environment"}
    assert "env_file" not in web


def test_env_file_of_an_override_file_is_relative_to_that_file() -> None:
    loaded = load_text("services:\n  web:\n    image: img\n    env_file: a.env\n",
                       "services:\n  web:\n    env_file: sub/b.env\n",
                       files={"/srv/app/a.env": "A=1\nB=1\n", "/srv/app/sub/b.env": "B=2\n"})
    assert loaded.project.services["web"].environment == {"A": "1", "B": "2"}


def test_environment_of_any_file_wins_over_every_env_file() -> None:
    loaded = load_text("services:\n  web:\n    image: img\n    environment: {A: base}\n",
                       "services:\n  web:\n    env_file: o.env\n",
                       files={"/srv/app/o.env": "A=file\n"})
    assert loaded.project.services["web"].environment == {"A": "base"}


def test_missing_env_file_names_the_place() -> None:
    assert errors("services:\n  web:\n    image: img\n    env_file:\n      - nope.env\n") == [
        "stack.yml:5:9: services.web.env_file[0]: env file /srv/app/nope.env does not exist"]


def test_variables_without_values_come_from_the_environment() -> None:
    web = service("environment: [A, B, C=3]\n", environ={"A": "from-env"})
    assert web["environment"] == {"A": "from-env", "C": "3"}
    web = service("environment: {A: null, B: }\n", files={"/srv/app/.env": "B=dot\n"})
    assert web["environment"] == {"B": "dot"}
