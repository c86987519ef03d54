"""Reading YAML with places: YAML 1.2 scalars, anchors and merge keys,
duplicate keys, and writing YAML that reads back the same."""

from __future__ import annotations

import pytest

from api.compose.diagnostics import Place, Report
from api.compose.yamlmarks import RawInt, dump_yaml, parse_yaml, plain


def parse(text: str) -> tuple[object, Report]:
    r = Report()
    n = parse_yaml(text, "f.yml", r)
    return n, r


@pytest.mark.parametrize("text, value", [
    ("yes", "yes"), ("on", "on"), ("No", "No"), ("true", True), ("False", False),
    ("22:22", "22:22"), ("1:30", "1:30"), ("0440", 0o440), ("0o17", 15), ("0x1F", 31), ("42", 42),
    ("-3", -3), ("1.5", 1.5), ("1e3", 1000.0), ("~", None), ("null", None), ("", None),
    ("08", 8), ("'0440'", "0440"), ('"true"', "true"), ("1_000", "1_000"),
])
def test_scalars_follow_yaml_1_2(text: str, value: object) -> None:
    n, r = parse(f"k: {text}\n")
    assert not r.errors
    got = plain(n)["k"]  # type: ignore[index]
    assert got == value
    assert isinstance(got, type(value)) and (not isinstance(got, int) or isinstance(got, (bool, RawInt)))


def test_numbers_keep_their_text() -> None:
    n, _ = parse("zip: 02134\nv: 1.10\n")
    v = plain(n)
    assert v["zip"].raw == "02134" and v["v"].raw == "1.10"  # type: ignore[index,union-attr]


def test_places_of_keys_and_values() -> None:
    n, _ = parse("services:\n  web:\n    image: nginx\n    ports: ['80', 81]\n")
    web = n.value["services"].value["web"]  # type: ignore[union-attr]
    assert web.key_place == Place("f.yml", 2, 3)
    assert web.value["image"].where == Place("f.yml", 3, 5)
    assert web.value["image"].place == Place("f.yml", 3, 12)
    assert web.value["ports"].value[1].place == Place("f.yml", 4, 19)


def test_anchors_aliases_and_merge_keys() -> None:
    n, r = parse("""\
x-base: &base
  image: a
  env: {A: 1}
x-more: &more
  image: b
  user: u
s:
  <<: [*base, *more]
  image: own
t:
  <<: *base
""")
    assert not r.errors
    v = plain(n)
    assert v["s"] == {"env": {"A": 1}, "user": "u", "image": "own"}  # type: ignore[index]
    assert v["t"] == {"image": "a", "env": {"A": 1}}  # type: ignore[index]


def test_a_key_given_twice_is_an_error() -> None:
    _, r = parse("a: 1\nb: 2\na: 3\n")
    assert [str(e) for e in r.errors] == ["f.yml:3:1: a: the key is given twice (first at line 1)"]


def test_recursive_alias_is_an_error() -> None:
    _, r = parse("a: &x\n  b: *x\n")
    # pyyaml gives an alias no place of its own: the anchored mapping's is shown
    assert [str(e) for e in r.errors] == ["f.yml:1:4: a.b: an alias refers to the mapping or list that contains it"]


def test_syntax_errors_name_the_place() -> None:
    _, r = parse("a:\n  b: [1, 2\n")
    assert len(r.errors) == 1 and str(r.errors[0]).startswith("f.yml:3:1: invalid YAML:")


def test_empty_file_and_other_tags() -> None:
    assert [str(e) for e in parse("# nothing\n")[1].errors] == ["f.yml:1:1: the file is empty"]
    assert [str(e) for e in parse("a: !!binary aGk=\n")[1].errors] == \
        ["f.yml:1:4: a: unsupported YAML tag tag:yaml.org,2002:binary"]


def test_merge_tags_are_kept() -> None:
    n, r = parse("a: !reset []\nb: !override\n  - 1\nc: !reset null\n")
    assert not r.errors
    assert [n.value[k].tag for k in "abc"] == ["!reset", "!override", "!reset"]  # type: ignore[union-attr]


@pytest.mark.parametrize("s", ["yes", "on", "0o17", "22:22", "1.0", "", "~", "null", "0440", "true", "1e3",
                               "a: b", "- x", "#c", "multi\nline", " lead", "tail ", "$x", "é"])
def test_dumped_strings_read_back_as_strings(s: str) -> None:
    n, r = parse(dump_yaml({"k": s}))
    assert not r.errors and plain(n) == {"k": s}
