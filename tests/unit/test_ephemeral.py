"""When the CLI may launch Prefect's temporary server before importing Prefect (and point itself at it)."""

import pytest

from docingest.ephemeral import prefect_configured_elsewhere

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path


def env_for(home, **extra):
    return {"PREFECT_HOME": str(home / "home"), **extra}


def test_default_configuration_takes_the_fast_path(home):
    assert not prefect_configured_elsewhere(env_for(home), home / "work")


@pytest.mark.parametrize("extra", [
    {"PREFECT_API_URL": "http://127.0.0.1:4200/api"},
    {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"},
    {"PREFECT_SERVER_EPHEMERAL_ENABLED": "0"},
    {"PREFECT_PROFILE": "local"},  # Prefect's own "local" profile names an API URL
])
def test_environment_that_names_an_api_or_forbids_the_temporary_server(home, extra):
    assert prefect_configured_elsewhere(env_for(home, **extra), home / "work")


@pytest.mark.parametrize(("name", "text"), [
    ("prefect.toml", "[api]\nurl = 'http://127.0.0.1:4200/api'\n"),
    ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://127.0.0.1:4200/api'\n"),
    (".env", "PREFECT_API_URL=http://127.0.0.1:4200/api\n"),
])
def test_settings_files_in_the_working_folder_are_left_to_prefect(home, name, text):
    (home / "work" / name).write_text(text)
    assert prefect_configured_elsewhere(env_for(home), home / "work")


def test_unrelated_pyproject_and_env_files_do_not_matter(home):
    (home / "work" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (home / "work" / ".env").write_text("OTHER=1\n")
    assert not prefect_configured_elsewhere(env_for(home), home / "work")


@pytest.mark.parametrize(("profiles", "expected"), [
    ('active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n', True),
    ('active = "mine"\n[profiles.mine]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = false\n', True),
    ('active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n', False),
    ('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n', False),
    ('active = "local"\n', True),  # not defined here: Prefect's own "local" profile, which has an API URL
    ("this is not toml [", True),  # unreadable: Prefect decides
])
def test_active_profile(home, profiles, expected):
    (home / "home" / "profiles.toml").write_text(profiles)
    assert prefect_configured_elsewhere(env_for(home), home / "work") is expected


def test_profile_chosen_by_the_environment(home):
    (home / "home" / "profiles.toml").write_text(
        'active = "plain"\n[profiles.plain]\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert not prefect_configured_elsewhere(env_for(home), home / "work")
    assert prefect_configured_elsewhere(env_for(home, PREFECT_PROFILE="remote"), home / "work")


def test_prefects_private_server_registry_is_still_where_docingest_reads_it():
    """docingest.ephemeral.temporary_servers reads Prefect's private SubprocessASGIServer._instances (no public way
    exists): if a Prefect upgrade renames or retypes it, this fails here, not silently in the service's shutdown."""
    from prefect.server.api.server import SubprocessASGIServer

    from docingest.ephemeral import temporary_servers

    assert isinstance(SubprocessASGIServer._instances, dict)
    assert temporary_servers() == list(SubprocessASGIServer._instances.values())
    assert all(hasattr(s, "running") and callable(s.stop) for s in temporary_servers())
