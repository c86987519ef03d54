"""The disk-reading shell: load_paths reads compose files, .env, env_file
and checks secret files on the real filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.compose import ComposeError, to_config, to_specs
from api.compose.files import DiskFiles, load_paths


def test_load_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "stack.yml").write_text(
        "services:\n  web:\n    image: img:${TAG}\n    env_file: web.env\n    secrets: [pw]\n"
        "    volumes: [./html:/usr/share/html]\nsecrets:\n  pw:\n    file: ./pw.txt\n")
    (tmp_path / "app" / "override.yml").write_text("services:\n  web:\n    environment: {B: over}\n")
    (tmp_path / "app" / ".env").write_text("TAG=3\n")
    (tmp_path / "app" / "web.env").write_text("A=1\nB=file\n")
    (tmp_path / "app" / "pw.txt").write_text("secret")
    monkeypatch.chdir(tmp_path)
    loaded = load_paths(["app/stack.yml", "app/override.yml"], environ={})
    web = to_config(loaded.project)["services"]["web"]
    assert web["image"] == "img:3" and web["environment"] == {"A": "1", "B": "over"}
    assert web["volumes"][0]["source"] == str(tmp_path / "app" / "html")
    blob = to_specs(loaded.project, "s").secrets[0]
    assert blob.file == str(tmp_path / "app" / "pw.txt")
    assert blob.spec(DiskFiles().read_bytes(blob.file)).data == b"secret"


def test_load_paths_messages_name_files_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stack.yml").write_text("services:\n  web:\n    image: x\n    secrets: [pw]\n"
                                        "secrets:\n  pw:\n    file: missing.txt\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ComposeError) as e:
        load_paths(["stack.yml"], environ={})
    assert e.value.messages() == [f"stack.yml:7:5: secrets.pw.file: file {tmp_path}/missing.txt does not exist"]


def test_env_file_option(tmp_path: Path) -> None:
    (tmp_path / "stack.yml").write_text("services:\n  web:\n    image: img:${TAG}\n")
    (tmp_path / ".env").write_text("TAG=dotenv\n")
    (tmp_path / "prod.env").write_text("TAG=prod\n")
    loaded = load_paths([str(tmp_path / "stack.yml")], environ={}, env_files=[str(tmp_path / "prod.env")])
    assert loaded.project.services["web"].image == "img:prod"
    loaded = load_paths([str(tmp_path / "stack.yml")], environ={"TAG": "proc"})
    assert loaded.project.services["web"].image == "img:proc"
