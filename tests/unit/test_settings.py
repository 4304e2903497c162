"""Settings in sections, every documented variable read: docs/configuration.md's table and the upload service's
settings list name variables; each one, set to a value other than its default, changes the setting it is documented
for, and every variable the settings read is documented."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from docingest.settings import SECTIONS, DocingestSettings, describe_error, env_names, get_settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
OTHERS = {"PREFECT_API_URL", "HF_HUB_OFFLINE"}  # in the table, read by Prefect and by huggingface_hub


def documented() -> set[str]:
    """The variables of the configuration table (first column) and of the upload service's "Settings:" list."""
    names: set[str] = set()
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    service = (DOCS / "upload-service.md").read_text()
    settings_list = service[service.index("\nSettings: "):]
    names |= set(re.findall(r"`(DOCINGEST_[A-Z0-9_]+)`", settings_list[:settings_list.index("\n\n")]))
    return names


def place(settings: DocingestSettings, where: str) -> typing.Any:
    value: typing.Any = settings
    for part in where.split("."):
        value = getattr(value, part)
    return value


def field_of(where: str):
    section, _, name = where.rpartition(".")
    model = SECTIONS[section] if section else DocingestSettings
    return model.model_fields[name]


def other_value(where: str) -> str:
    """A value for the variable that differs from the field's default and passes its constraints."""
    info = field_of(where)
    default = info.get_default(call_default_factory=True)
    union = typing.get_origin(info.annotation) in (typing.Union, __import__("types").UnionType)
    kinds = set(typing.get_args(info.annotation)) if union else {info.annotation}
    kinds.discard(type(None))
    literal = [a for k in kinds if typing.get_origin(k) is typing.Literal for a in typing.get_args(k)]
    if literal:
        return next(choice for choice in literal if choice != default)
    if bool in kinds:
        return "true" if not default else "false"
    if int in kinds or float in kinds:
        return str((default or 0) + 1)  # the default (or none) plus one passes every bound here
    if SecretStr in kinds:
        return "s3cr3t"
    if Path in kinds:
        return "/tmp/docingest-settings-test"
    if where == "disabled_plugins":
        return "one, two"
    if any(typing.get_origin(k) is list for k in kinds) or typing.get_origin(info.annotation) is list:
        return '["pdf", "md"]'
    return "http://127.0.0.1:1/test"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No DOCINGEST_ or AWS_ variable and no .env file from the developer's environment."""
    import os

    for name in list(os.environ):
        if name.startswith(("DOCINGEST_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_every_documented_variable_is_read(clean_env):
    read = dict(env_names())
    docs = documented()
    assert len(docs) > 50, "the docs' variables were not found: has the table's layout changed?"
    unread = sorted(docs - set(read) - OTHERS)
    assert not unread, f"documented but read by no setting: {unread}"
    for name in sorted(docs - OTHERS):
        value = other_value(read[name])
        clean_env.setenv(name, value)
        settings = DocingestSettings()
        clean_env.delenv(name)
        default = field_of(read[name]).get_default(call_default_factory=True)
        got = place(settings, read[name])
        assert got != default, f"{name}={value} left {read[name]} at its default {default!r}"


def test_every_variable_read_is_documented():
    docs = documented()
    undocumented = sorted(name for name, _ in env_names() if name not in docs)
    # AWS_*: documented as the S3 keys' second names, in the same table row
    assert undocumented == [], f"read but not documented in docs/configuration.md or upload-service.md: {undocumented}"


def test_sections_read_the_documented_names_and_a_dotenv_file(clean_env, tmp_path):
    (tmp_path / ".env").write_text("DOCINGEST_QDRANT_URL=http://127.0.0.1:6333\nDOCINGEST_INDEX_FROM_POINTS=7\n"
                                   "AWS_ACCESS_KEY_ID=from-aws\nDOCINGEST_TASK_RUNNER=dask\n")
    clean_env.setenv("DOCINGEST_UPLOAD_PART_SIZE", "2048")
    settings = get_settings()
    assert settings.qdrant.url == "http://127.0.0.1:6333" and settings.qdrant.index_from_points == 7
    assert settings.s3.access_key is not None and settings.s3.access_key.get_secret_value() == "from-aws"
    assert settings.prefect.task_runner == "dask" and settings.upload.part_size == 2048
    assert "model" not in settings.embed.model_fields_set  # only what was given counts as given
    clean_env.setenv("DOCINGEST_S3_ACCESS_KEY", "own")  # docingest's name wins over AWS's
    assert DocingestSettings().s3.access_key.get_secret_value() == "own"  # type: ignore[union-attr]


def test_python_callers_set_sections_by_field_name():
    settings = DocingestSettings(qdrant={"path": "/x", "index_from_points": 3}, upload={"part_size": 4096})
    assert settings.resolved_qdrant_path() == Path("/x") and settings.qdrant.index_from_points == 3
    assert settings.upload.part_size == 4096


@pytest.mark.parametrize(("name", "value", "message"), [
    ("DOCINGEST_UPLOAD_PART_SIZE", "abc", "DOCINGEST_UPLOAD_PART_SIZE: Input should be a valid integer"),
    ("DOCINGEST_INDEX_THREADS", "-1", "DOCINGEST_INDEX_THREADS: Input should be greater than or equal to 0"),
    ("DOCINGEST_LOCK_LEASE_S", "5", "DOCINGEST_LOCK_LEASE_S: Input should be greater than or equal to 60"),
    ("DOCINGEST_CRASH_RETRIES", "-2", "DOCINGEST_CRASH_RETRIES: Input should be greater than or equal to 0"),
])
def test_an_invalid_value_is_named_by_its_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        DocingestSettings()
    assert describe_error(caught.value).startswith(message)


def test_the_store_location_and_the_qdrant_section_agree_on_defaults():
    """core's QdrantLocation (built from blocks too) and the settings section describe the same knobs: a default
    changed in one place only would make a block-built store behave unlike a settings-built one."""
    from docingest.core.store import QdrantLocation
    from docingest.settings import QdrantSettings

    shared = set(QdrantLocation.model_fields) & set(QdrantSettings.model_fields)
    assert shared >= {"url", "path", "api_key", "timeout", "engine", "index_from_points", "index_threads",
                      "min_free_mb"}
    assert {n: QdrantLocation.model_fields[n].default for n in shared} == \
        {n: QdrantSettings.model_fields[n].default for n in shared}
