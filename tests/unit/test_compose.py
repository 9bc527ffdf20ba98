"""docker-compose.yml and the Dockerfile checked against the code.

No Docker engine runs here, so nothing can start the compose file: these tests read it the
way Compose does (YAML merge keys, ``${VAR:-default}`` interpolation, environment
pass-through) and hold it to the code it runs. Renaming a setting, a subcommand or an
option, moving a port, raising the time limit past the grace period, or letting the
shell's ``INTENT_*`` reach a container makes one of them fail.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from intent import cli
from intent.settings import ENV_PREFIX, Settings, get_settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What the file requires from the shell or .env (``${NAME:?...}``): stand-ins, as a user's
# .env would give them. The file itself holds no secret.
PLACEHOLDERS = {
    "INTENT_FLOWER_BASIC_AUTH": "ops:placeholder-password",
    "REDIS_PASSWORD": "0123456789abcdef0123456789abcdef",  # token_hex(16), as the README says
}
# The only settings the file reads from the shell / .env: the two secrets.
SECRET_VARIABLES = {"INTENT_ADMIN_TOKEN", "INTENT_FLOWER_BASIC_AUTH"}
PUBLISH_VARIABLE = "PUBLISH_ADDRESS"
# Docker's SIGTERM-to-SIGKILL default, and what a worker's warm shutdown needs on top of its
# last task's run (the pool's exit, the last acks and events).
DOCKER_DEFAULT_GRACE = 10.0
WARM_SHUTDOWN_MARGIN = 10.0
README = ROOT / "README.md"

# The processes the issue asks for, by the `intent` subcommand that runs each.
EXPECTED_COMMANDS = {"worker", "beat", "flower", "admin", "reference"}


# --- reading the file the way Compose does ------------------------------------------


class MissingVariable(Exception):
    """``${NAME:?message}`` with NAME unset: Compose refuses the whole file."""


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(expression: str, env: Mapping[str, str]) -> str:
    match = re.fullmatch(rf"({_NAME})(?:(:?[-?])(.*))?", expression, re.DOTALL)
    if match is None:
        raise ValueError(f"interpolation Compose does not support: ${{{expression}}}")
    name, operator, argument = match.groups()
    value = env.get(name)
    if operator is None:
        return value or ""  # Compose warns and substitutes an empty string
    missing = value is None or (operator.startswith(":") and value == "")
    if operator.endswith("-"):
        return interpolate(argument, env) if missing else str(value)
    if missing:
        raise MissingVariable(f"{name}: {interpolate(argument, env)}")
    return str(value)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-x}``,
    ``${NAME-x}``, ``${NAME:?msg}``, ``${NAME?msg}``, nested in the default."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        following = text[index + 1 : index + 2]
        if char != "$":
            out.append(char)
            index += 1
        elif following == "$":
            out.append("$")
            index += 2
        elif following == "{":
            end = _closing_brace(text, index + 1)
            out.append(_expand(text[index + 2 : end], env))
            index = end + 1
        elif match := re.match(_NAME, text[index + 1 :]):
            out.append(env.get(match.group(), ""))
            index += 1 + match.end()
        else:
            out.append(char)
            index += 1
    return "".join(out)


def referenced_variables(text: str) -> set[str]:
    """Every variable a string interpolates (``$$`` escapes excluded)."""
    unescaped = text.replace("$$", "")
    return set(re.findall(rf"\$\{{?({_NAME})", unescaped))


def variable_uses(text: str) -> list[tuple[str, str | None]]:
    """Each interpolation in a string: the variable and its operator (``:-``, ``-``, ``:?``,
    ``?``, or None for a bare ``$NAME`` / ``${NAME}``)."""
    unescaped = text.replace("$$", "")
    uses = [
        (name, operator or None)
        for name, operator in re.findall(rf"\$\{{({_NAME})(:?[-?])?", unescaped)
    ]
    return uses + [(name, None) for name in re.findall(rf"\$({_NAME})", unescaped)]


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_strings(item)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    return node


RAW = yaml.safe_load(COMPOSE_FILE.read_text())


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file after interpolation against ``env`` (the placeholders by default)."""
    return _resolve(RAW, PLACEHOLDERS if env is None else env)


SERVICES: dict[str, dict[str, Any]] = compose()["services"]
INTENT_SERVICES = sorted(name for name, svc in SERVICES.items() if "build" in svc)


def environment(service: dict[str, Any], shell: Mapping[str, str]) -> dict[str, str]:
    """A container's environment: a key without a value passes the shell's (or .env's)
    value through, and is unset when the shell has none."""
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) if "=" in item else (item, None) for item in declared)
    env: dict[str, str] = {}
    for key, value in declared.items():
        if value is None:
            if key in shell:
                env[key] = shell[key]
        else:
            env[key] = str(value)
    return env


def service_env(name: str) -> dict[str, str]:
    return environment(SERVICES[name], PLACEHOLDERS)


def service_with_command(command: str) -> str:
    names = [name for name in INTENT_SERVICES if SERVICES[name]["command"][0] == command]
    assert len(names) == 1, f"expected one service running `intent {command}`, found {names}"
    return names[0]


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Settings as a service's container would load them (its environment, nothing else)."""

    def load(name: str) -> Settings:
        for key, value in service_env(name).items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return load_settings()

    yield load
    get_settings.cache_clear()


def parse_command(argv: list[str]) -> Any:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return cli.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`intent {' '.join(argv)}` is refused by intent.cli: {err.getvalue()}")


class _Exec(Exception):
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv


def exec_argv(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[str]:
    """The program a command execs into (``intent worker`` becomes ``celery ... worker``)."""

    def fake_exec(path: str, args: list[str], env: object = None) -> None:
        raise _Exec(list(args))

    monkeypatch.setattr("os.execv", fake_exec)
    monkeypatch.setattr("os.execve", fake_exec)
    args = parse_command(argv)
    with pytest.raises(_Exec) as caught:
        args.func(args)
    return caught.value.argv


def option(argv: list[str], *names: str) -> str:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of every published port ("8000:8000", "127.0.0.1:80:8000", long)."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split(":")[-1].split("/")[0]))
    return ports


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    """(host address, None for every interface; host port; container port) of each port,
    short ("127.0.0.1:8000:8000", "8000:8000") or long syntax."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            assert "published" in entry, f"{entry}: no host port (Docker would pick one)"
            address = entry.get("host_ip") or None
            found.append((address, int(entry["published"]), int(entry["target"])))
            continue
        match = re.fullmatch(r"(?:(\[[^\]]+\]|[^:\[]+):)?(\d+):(\d+)", str(entry).split("/")[0])
        assert match is not None, f"{entry}: no host port (Docker would pick one)"
        address, host, container = match.groups()
        found.append((address.strip("[]") if address else None, int(host), int(container)))
    return found


_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Compose duration (``90s``, ``1m30s``, ``1.5s``, ``500ms``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Compose duration: {text!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


# A tag naming one release: major.minor.patch, optionally a variant (-slim-bookworm).
FULL_VERSION = re.compile(r"v?\d+\.\d+\.\d+(?:[-.+][\w.-]+)?")


def image_tag(image: str) -> tuple[str, str | None]:
    """(repository, tag or None) of an image reference (registry ports and digests kept
    apart)."""
    name = image.partition("@")[0]
    repository, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, None
    return repository, tag


def header_variables() -> dict[str, str]:
    """The variables the compose file's header documents: name -> "required"/"optional"."""
    documented = {}
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break  # the header ends at the first line that is not a comment
        if match := re.match(rf"#\s+({_NAME})\s+(required|optional):", line):
            documented[match.group(1)] = match.group(2)
    return documented


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def containers(shell: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every service as Compose would create it from this shell (or .env): the file
    interpolated against it, each environment resolved as the container gets it."""
    return {
        name: {**service, "environment": environment(service, shell)}
        for name, service in compose(shell)["services"].items()
    }


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:]) if test[0] == "CMD" else test[1]


def healthcheck_urls(service: dict[str, Any]) -> list[tuple[str, int, str]]:
    found = re.findall(r"https?://([\w.-]+):(\d+)(/[\w/.-]*)", healthcheck_text(service))
    return [(host, int(port), path) for host, port, path in found]


def healthcheck_python(service: dict[str, Any]) -> str | None:
    test = service["healthcheck"]["test"]
    if isinstance(test, list) and test[:3] == ["CMD", "python", "-c"]:
        return str(test[3])
    return None


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Mount path -> named volume."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume":
                mounts[entry["target"]] = entry["source"]
        else:
            source, target = str(entry).split(":")[:2]
            mounts[target] = source
    return mounts


def secret_settings() -> set[str]:
    def holds_secret(annotation: Any) -> bool:
        if annotation is SecretStr:
            return True
        return any(holds_secret(arg) for arg in typing.get_args(annotation))

    return {name for name, field in Settings.model_fields.items() if holds_secret(field.annotation)}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def setting_of(variable: str) -> str | None:
    if not variable.startswith(ENV_PREFIX):
        return None
    field = variable[len(ENV_PREFIX) :].lower()
    return field if field in Settings.model_fields else None


# --- commands -----------------------------------------------------------------------


def test_the_stack_has_every_process_the_issue_names() -> None:
    commands = {SERVICES[name]["command"][0] for name in INTENT_SERVICES}
    assert commands == EXPECTED_COMMANDS
    assert {"redis"} <= set(SERVICES)


@pytest.mark.parametrize("name", INTENT_SERVICES)
def test_each_service_runs_an_intent_command_with_options_it_accepts(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list), "a list: Compose would shell-split a string"
    args = parse_command([str(part) for part in command])
    assert args.command == command[0]


def test_the_image_entrypoint_is_the_projects_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    entrypoint = dockerfile_json("ENTRYPOINT")
    assert len(entrypoint) == 1 and entrypoint[0] in scripts
    # ...and it is the program whose parser the commands above were checked with.
    module, function = scripts[entrypoint[0]].split(":")
    assert module == cli.__name__
    assert getattr(cli, function) is cli.main
    # Every service runs through that entrypoint (command only, no entrypoint override).
    for name in INTENT_SERVICES:
        assert "entrypoint" not in SERVICES[name], name


def test_the_worker_healthcheck_pings_this_containers_worker_of_the_same_app(
    monkeypatch: pytest.MonkeyPatch, settings_of: Any
) -> None:
    name = service_with_command("worker")
    settings = settings_of(name)
    argv = exec_argv(monkeypatch, SERVICES[name]["command"])
    # No -Q: the worker consumes the app's queues, the container's settings' own.
    assert not {"-Q", "--queues"} & set(argv), argv
    assert settings.worker_queues == (settings.queue, "celery")
    check = shlex.split(healthcheck_text(SERVICES[name]))
    assert check[:3] == ["celery", "-A", option(argv, "-A", "--app")]
    assert check[3:5] == ["inspect", "ping"]
    # The worker's node name is celery@<hostname>: the check asks this container's only.
    assert option(check, "-d", "--destination") == "celery@$HOSTNAME"
    assert "-n" not in argv and "--hostname" not in argv


def test_the_beat_healthcheck_reads_the_lock_of_the_app_beat_runs(
    monkeypatch: pytest.MonkeyPatch, settings_of: Any
) -> None:
    name = service_with_command("beat")
    settings_of(name)
    argv = exec_argv(monkeypatch, SERVICES[name]["command"])
    assert "beat" in argv
    app_module = option(argv, "-A", "--app")
    code = healthcheck_python(SERVICES[name])
    assert code is not None
    imported = {
        node.module
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert app_module in imported


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_that_can_run(name: str) -> None:
    assert "healthcheck" in SERVICES[name], f"{name} has no healthcheck"
    code = healthcheck_python(SERVICES[name])
    if code is None:
        return
    tree = ast.parse(code)  # a syntax error fails here
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        for module in modules:
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_dependencies_name_services_that_report_health() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {} for target in depends}
        for target, condition in depends.items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[target]


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize("name", INTENT_SERVICES)
def test_every_variable_a_service_sets_is_a_setting(name: str) -> None:
    for variable in SERVICES[name].get("environment") or {}:
        assert setting_of(variable), f"{name}: {variable} is not a field of intent.settings"


def test_no_environment_key_passes_the_shells_value_through() -> None:
    # `KEY:` (or `- KEY` in a list) hands the container whatever the operator's shell or
    # .env holds, unseen in this file: every key has its value written here.
    sections = {"x-intent-env": RAW["x-intent-env"]}
    sections |= {
        name: service.get("environment") or {} for name, service in RAW["services"].items()
    }
    for where, declared in sections.items():
        if isinstance(declared, list):
            passed = [item for item in declared if "=" not in str(item)]
        else:
            passed = [key for key, value in declared.items() if value is None]
        assert not passed, f"{where}: {passed} pass the shell's value through"


def test_no_setting_is_read_from_the_shell_but_the_two_secrets() -> None:
    # A developer's exported INTENT_* (for local work) must not change the containers: the
    # file reads no INTENT_ variable except the two secrets, each into its own setting.
    read = set().union(*(referenced_variables(text) for text in _walk_strings(RAW)))
    assert {v for v in read if v.startswith(ENV_PREFIX)} == SECRET_VARIABLES
    for name, service in RAW["services"].items():
        for key, value in (service.get("environment") or {}).items():
            for variable in referenced_variables(str(value)) & SECRET_VARIABLES:
                assert variable == key, f"{name}: {key} reads {variable}"
    # ...and nowhere else (a command line, a health check, an anchor).
    elsewhere = {key: value for key, value in RAW.items() if key != "services"}
    elsewhere["services"] = {
        name: {key: value for key, value in service.items() if key != "environment"}
        for name, service in RAW["services"].items()
    }
    outside = set().union(*(referenced_variables(text) for text in _walk_strings(elsewhere)))
    assert not outside & SECRET_VARIABLES
    # What an operator may vary is a compose variable of its own (not INTENT_*) feeding a
    # setting: every other variable the services' settings read.
    for key, value in RAW["x-intent-env"].items():
        for variable in referenced_variables(str(value)):
            assert not variable.startswith(ENV_PREFIX), f"{key} reads {variable}"


def test_the_shells_intent_variables_do_not_change_the_containers() -> None:
    junk = {env_name(field): f"junk-{field}" for field in Settings.model_fields}
    junk[ENV_PREFIX + "NOT_A_SETTING"] = "junk"
    clean = containers(PLACEHOLDERS)
    dirty = containers({**PLACEHOLDERS, **junk})
    for name in clean:
        # The secrets are read from the shell on purpose: they are what differs.
        for secret in SECRET_VARIABLES & set(dirty[name]["environment"]):
            assert dirty[name]["environment"].pop(secret) == junk[secret], (name, secret)
            clean[name]["environment"].pop(secret, None)
        assert dirty[name] == clean[name], f"{name}: the shell's INTENT_* reached it"
    # ...and what was compared holds the containers' settings.
    assert clean[service_with_command("worker")]["environment"]["INTENT_QUEUE"] == "intent"


def test_the_header_documents_every_variable_the_file_reads() -> None:
    uses = [use for text in _walk_strings(RAW) for use in variable_uses(text)]
    read = {name for name, _ in uses}
    documented = header_variables()
    assert set(documented) == read, "the header's list is the file's variables"
    for name, operator in uses:
        if documented[name] == "required":
            # Compose refuses the file without it, naming it (:? also refuses empty).
            assert operator == ":?", f"${{{name}}}: required, so ${{{name}:?message}}"
        else:
            # Unset or empty (`NAME=` in .env): the default, never an empty setting.
            assert operator == ":-", f"${{{name}}}: optional, so ${{{name}:-default}}"
    assert set(PLACEHOLDERS) == {name for name, kind in documented.items() if kind == "required"}
    # The README's section names each one (what to put in .env).
    section = readme_section("Docker Compose")
    for name in read:
        assert f"`{name}" in section, f"README's Docker Compose section: no {name}"


@pytest.mark.parametrize("variable", sorted(PLACEHOLDERS))
def test_the_file_refuses_to_start_without_a_required_variable(variable: str) -> None:
    others = {k: v for k, v in PLACEHOLDERS.items() if k != variable}
    with pytest.raises(MissingVariable, match=variable):
        compose(others)
    with pytest.raises(MissingVariable, match=variable):
        compose({**others, variable: ""})


def test_the_shared_environment_is_one_anchor_used_by_every_intent_service() -> None:
    shared = RAW["x-intent-env"]
    for name in INTENT_SERVICES:
        declared = RAW["services"][name]["environment"]
        assert {k: v for k, v in declared.items() if k in shared} == shared, name


@pytest.mark.parametrize("name", INTENT_SERVICES)
def test_each_services_environment_loads_as_valid_settings(name: str, settings_of: Any) -> None:
    settings = settings_of(name)  # raises SettingsError naming the variable if invalid
    for variable, value in service_env(name).items():
        field = setting_of(variable)
        assert field is not None
        loaded = getattr(settings, field)
        if isinstance(loaded, SecretStr):
            loaded = loaded.get_secret_value()
        # The value was taken, not ignored (Settings ignores unknown variables).
        expected = type(loaded)(value) if isinstance(loaded, int | float) else value
        assert loaded == expected, variable
    if name != service_with_command("reference"):
        assert settings.redis_url
        settings.effective_broker_url  # noqa: B018 - raises when no broker can be derived


def test_a_bad_value_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above is only worth something if load_settings refuses bad values.
    env = service_env(service_with_command("worker"))
    env["INTENT_LOG_FORMAT"] = "yaml"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="INTENT_LOG_FORMAT"):
        load_settings()


def test_no_secret_is_written_in_the_file() -> None:
    secrets = {env_name(field) for field in secret_settings()}
    assert {"INTENT_ADMIN_TOKEN", "INTENT_FLOWER_BASIC_AUTH"} <= secrets
    for name in INTENT_SERVICES:
        for key, value in (RAW["services"][name].get("environment") or {}).items():
            if key not in secrets:
                continue
            # Read explicitly from the shell / .env, empty or required: never a default,
            # never a bare `KEY:` pass-through.
            assert isinstance(value, str) and re.fullmatch(
                rf"\$\{{{key}(?::-|:\?[^}}]*)\}}", value
            ), f"{name}: {key} must be ${{{key}:-}} or ${{{key}:?message}}"
    # The one password in a URL is REDIS_PASSWORD's: another value, another URL.
    other = {**PLACEHOLDERS, "REDIS_PASSWORD": "fedcba9876543210fedcba9876543210"}
    for shell in (PLACEHOLDERS, other):
        for name, service in containers(shell).items():
            for key, value in service["environment"].items():
                if key.endswith("_URL") and value:
                    assert urlsplit(value).password in (None, shell["REDIS_PASSWORD"]), (
                        name,
                        key,
                    )


def test_flower_refuses_to_start_without_credentials_outside_development() -> None:
    name = service_with_command("flower")
    env = service_env(name)
    assert env["INTENT_ENVIRONMENT"] == "production"
    assert env["INTENT_FLOWER_BASIC_AUTH"] == PLACEHOLDERS["INTENT_FLOWER_BASIC_AUTH"]
    without = {k: v for k, v in PLACEHOLDERS.items() if k != "INTENT_FLOWER_BASIC_AUTH"}
    with pytest.raises(MissingVariable, match="INTENT_FLOWER_BASIC_AUTH"):
        compose(without)


def test_the_admin_token_is_optional_and_unset_means_no_token(settings_of: Any) -> None:
    name = service_with_command("admin")
    admin = RAW["services"][name]["environment"]
    assert "INTENT_ADMIN_TOKEN" in admin
    # Unset in the shell, the container gets it empty, which intent.ops.admin takes as no token
    # (SecretStr("") is falsy): every mutating route is refused.
    assert service_env(name)["INTENT_ADMIN_TOKEN"] == ""
    assert not settings_of(name).admin_token
    given = containers({**PLACEHOLDERS, "INTENT_ADMIN_TOKEN": "t0k"})[name]["environment"]
    assert given["INTENT_ADMIN_TOKEN"] == "t0k"


# --- ports --------------------------------------------------------------------------


def test_admin_listens_publishes_and_is_checked_on_its_port(settings_of: Any) -> None:
    name = service_with_command("admin")
    settings = settings_of(name)
    args = parse_command(SERVICES[name]["command"])
    port = args.port or settings.admin_port
    assert (args.host or settings.admin_host) == "0.0.0.0"  # reachable through the port
    assert container_ports(SERVICES[name]) == {port}
    assert healthcheck_urls(SERVICES[name]) == [("127.0.0.1", port, "/health")]


def test_flower_listens_publishes_and_is_checked_on_its_port(
    monkeypatch: pytest.MonkeyPatch, settings_of: Any
) -> None:
    name = service_with_command("flower")
    settings_of(name)
    argv = exec_argv(monkeypatch, SERVICES[name]["command"])  # celery ... flower --port=N
    assert "flower" in argv
    port = int(option(argv, "--port"))
    # Reachable through the published port: not bound to the container's loopback.
    assert "--address" not in " ".join(argv) or option(argv, "--address") in ("", "0.0.0.0")
    assert container_ports(SERVICES[name]) == {port}
    assert healthcheck_urls(SERVICES[name]) == [("127.0.0.1", port, "/healthcheck")]


def test_the_reference_services_are_where_the_other_services_call_them(
    settings_of: Any,
) -> None:
    name = service_with_command("reference")
    assert SERVICES[name].get("profiles") == ["reference"]
    args = parse_command(SERVICES[name]["command"])
    assert args.host == "0.0.0.0"
    ports = {args.context_port, args.prediction_port}
    assert container_ports(SERVICES[name]) == ports
    assert {(port, path) for _, port, path in healthcheck_urls(SERVICES[name])} == {
        (args.context_port, "/health"),
        (args.prediction_port, "/health"),
    }
    for caller in INTENT_SERVICES:
        if caller == name:
            continue
        settings = settings_of(caller)
        context = urlsplit(settings.context_service_url)
        prediction = urlsplit(settings.prediction_service_url)
        assert (context.hostname, context.port) == (name, args.context_port), caller
        assert (prediction.hostname, prediction.port) == (name, args.prediction_port), caller


def test_redis_is_persistent_checked_and_where_the_settings_point(settings_of: Any) -> None:
    redis_service = SERVICES["redis"]
    assert image_tag(str(redis_service["image"]))[0] == "redis"
    command = [str(part) for part in redis_service["command"]]
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    data_dir = option(command, "--dir") if "--dir" in command else "/data"  # the image's
    assert data_dir in volume_targets(redis_service)
    assert volume_targets(redis_service)[data_dir] in RAW["volumes"]
    port = int(option(command, "--port")) if "--port" in command else 6379
    # Every intent service (the reference too: it shares the settings) talks to this Redis
    # with its password, for the breaker, the broker and the results alike.
    password = PLACEHOLDERS["REDIS_PASSWORD"]
    assert option(command, "--requirepass") == password
    for name in INTENT_SERVICES:
        settings = settings_of(name)
        for url in (
            settings.redis_url,
            settings.effective_broker_url,
            settings.effective_result_backend,
        ):
            parts = urlsplit(url)
            assert (parts.hostname, parts.port or 6379) == ("redis", port), (name, url)
            assert parts.password == password, f"{name}: {url} without Redis's password"


def test_redis_health_check_authenticates() -> None:
    redis_service = SERVICES["redis"]
    # redis-cli reads the password from REDISCLI_AUTH (not on its command line); an
    # unauthenticated PING answers NOAUTH, which grep turns into a failed check whatever
    # redis-cli's exit status.
    assert environment(redis_service, {})["REDISCLI_AUTH"] == PLACEHOLDERS["REDIS_PASSWORD"]
    assert healthcheck_text(redis_service) == "redis-cli ping | grep -qx PONG"
    assert SERVICES["redis"]["healthcheck"]["test"][0] == "CMD-SHELL"  # the pipe needs a shell


def test_redis_never_evicts_the_brokers_or_the_breakers_keys() -> None:
    # Queued tasks, unacked messages, breaker state and waiting steps live in Redis: at
    # maxmemory an eviction policy would drop them silently; noeviction refuses writes.
    command = [str(part) for part in SERVICES["redis"]["command"]]
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert command.count("--maxmemory-policy") == 1
    if "--maxmemory" in command:
        assert re.fullmatch(r"\d+(?:[kmg]b?)?", option(command, "--maxmemory"), re.IGNORECASE)
        limited = compose({**PLACEHOLDERS, "REDIS_MAXMEMORY": "2gb"})["services"]["redis"]
        assert option([str(part) for part in limited["command"]], "--maxmemory") == "2gb"


def test_the_image_exposes_the_published_ports() -> None:
    exposed = {int(port) for port in dockerfile_args("EXPOSE")}
    published = set().union(*(container_ports(SERVICES[name]) for name in INTENT_SERVICES))
    assert exposed == published
    for name in INTENT_SERVICES:
        for _, host_port, container_port in published_ports(SERVICES[name]):
            assert host_port == container_port, f"{name}: the documented port is the same"


@pytest.mark.parametrize(
    ("shell", "address"),
    [
        ({}, "127.0.0.1"),
        ({PUBLISH_VARIABLE: ""}, "127.0.0.1"),  # `PUBLISH_ADDRESS=` in .env: still loopback
        ({PUBLISH_VARIABLE: "0.0.0.0"}, "0.0.0.0"),
        ({PUBLISH_VARIABLE: "192.0.2.10"}, "192.0.2.10"),
    ],
)
def test_published_ports_bind_loopback_unless_the_operator_sets_an_address(
    shell: dict[str, str], address: str
) -> None:
    # The admin's GET routes need no token, the reference services' fault switches none:
    # by default only this machine reaches them.
    services = compose({**PLACEHOLDERS, **shell})["services"]
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert {service_with_command(c) for c in ("admin", "flower", "reference")} <= publishing
    for name in publishing:
        for bound, host_port, _ in published_ports(services[name]):
            assert bound == address, f"{name}: port {host_port} on {bound or 'every interface'}"


# --- images and stopping --------------------------------------------------------------


def test_every_image_is_pinned_to_a_release() -> None:
    images = {name: str(service["image"]) for name, service in SERVICES.items()}
    assert set(images) == set(SERVICES), "every service names its image"
    images |= {f"Dockerfile FROM {i}": value for i, value in enumerate(dockerfile_values("FROM"))}
    for where, image in images.items():
        image = image.split()[0]  # FROM image AS stage
        _, tag = image_tag(image)
        assert tag is not None, f"{where}: {image} has no tag (latest, whatever it is then)"
        assert tag != "latest", f"{where}: {image}"
        assert FULL_VERSION.fullmatch(tag), f"{where}: {image}: not major.minor.patch"
    # The project's image is tagged with the version it is built from.
    version = PYPROJECT["project"]["version"]
    for name in INTENT_SERVICES:
        assert images[name] == f"intent-pipeline:{version}", name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_sets_a_stop_grace_period(name: str) -> None:
    # Docker's default is 10 s from SIGTERM to SIGKILL: each service says what it needs.
    grace = SERVICES[name].get("stop_grace_period")
    assert grace is not None, f"{name}: no stop_grace_period"
    assert parse_duration(str(grace)) >= DOCKER_DEFAULT_GRACE, name
    assert SERVICES[name].get("stop_signal", "SIGTERM") == "SIGTERM", name


def test_the_worker_finishes_its_tasks_before_docker_kills_it(
    monkeypatch: pytest.MonkeyPatch, settings_of: Any
) -> None:
    name = service_with_command("worker")
    settings = settings_of(name)
    # SIGTERM reaches Celery itself (intent worker execs it): its warm shutdown lets the
    # tasks in hand run to the hard time limit at most, then the pool exits.
    argv = exec_argv(monkeypatch, SERVICES[name]["command"])
    assert "worker" in argv
    grace = parse_duration(str(SERVICES[name]["stop_grace_period"]))
    assert grace >= settings.task_time_limit + WARM_SHUTDOWN_MARGIN, (
        f"stop_grace_period {grace:g} s: a task may run {settings.task_time_limit:g} s"
    )
    # Compose stops a service before those it depends on: Redis outlives the shutdown.
    assert "redis" in SERVICES[name]["depends_on"]


# --- volumes and the image ----------------------------------------------------------


def test_worker_and_admin_share_the_metrics_directory(settings_of: Any) -> None:
    worker, admin = service_with_command("worker"), service_with_command("admin")
    worker_dir = settings_of(worker).metrics_dir
    admin_dir = settings_of(admin).metrics_dir
    assert worker_dir and worker_dir == admin_dir
    worker_volume = volume_targets(SERVICES[worker]).get(worker_dir)
    admin_volume = volume_targets(SERVICES[admin]).get(admin_dir)
    assert worker_volume is not None and worker_volume == admin_volume
    assert worker_volume in RAW["volumes"]
    # The image creates the directory for its user, so a new volume is writable by it.
    user = dockerfile_args("USER")[0]
    assert any(
        worker_dir in run and user in run and ("chown" in run or "-o " + user in run)
        for run in dockerfile_values("RUN")
    )


def test_the_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    instructions = dockerfile()
    assert instructions[0][0] == "FROM"
    # Python pinned to a full release of the minor version pyproject requires at least.
    repository, tag = image_tag(instructions[0][1])
    assert repository == "python" and tag is not None
    assert re.fullmatch(r"3\.11\.\d+-slim(?:-\w+)?", tag), tag
    minimum = re.search(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum is not None and minimum.group(1) == "3.11"
    keywords = [keyword for keyword, _ in instructions]
    install = next(
        i
        for i, (key, value) in enumerate(instructions)
        if key == "RUN" and "pip install ." in value
    )
    users = [i for i, keyword in enumerate(keywords) if keyword == "USER"]
    assert users and users[-1] > install
    assert dockerfile_args("USER")[0] not in ("root", "0")
    # What `pip install .` builds from is copied in: pyproject, readme, modules, packages.
    copied: set[str] = set()
    for value in dockerfile_values("COPY"):
        sources = shlex.split(value)[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            copied.add(source.rstrip("/"))
    project = PYPROJECT["project"]
    tool = PYPROJECT["tool"]["setuptools"]
    needed = {"pyproject.toml", project["readme"]}
    needed |= {module + ".py" for module in tool.get("py-modules", [])}
    for pattern in tool["packages"]["find"]["include"]:
        top = pattern.split(".")[0].rstrip("*")
        needed |= {
            path.name
            for path in ROOT.iterdir()
            if path.is_dir() and path.name.startswith(top) and (path / "__init__.py").exists()
        }
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(value.split())))
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [value for key, value in dockerfile() if key == keyword]


def dockerfile_args(keyword: str) -> list[str]:
    values = dockerfile_values(keyword)
    assert values, f"no {keyword} in the Dockerfile"
    return values[-1].split()


def dockerfile_json(keyword: str) -> list[str]:
    values = dockerfile_values(keyword)
    assert values, f"no {keyword} in the Dockerfile"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} in exec form"
    return [str(part) for part in parsed]


# --- the reader itself ----------------------------------------------------------------


def test_interpolation_follows_compose() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|$$SET|$SET", env) == (
        "value|d||d|$SET|value"
    )
    assert interpolate("${UNSET:-${SET}}", env) == "value"
    with pytest.raises(MissingVariable, match="UNSET: give it"):
        interpolate("${UNSET:?give it}", env)
    assert referenced_variables("${A:-${B}} $$C $D") == {"A", "B", "D"}
    assert sorted(variable_uses("${A:-${B}} ${C:?x} ${D-y} $$E $F")) == [
        ("A", ":-"),
        ("B", None),
        ("C", ":?"),
        ("D", "-"),
        ("F", None),
    ]


def test_the_readers_of_ports_durations_and_images() -> None:
    assert published_ports({"ports": ["8000:8000", "127.0.0.1:80:8000/tcp", "[::1]:1:2"]}) == [
        (None, 8000, 8000),
        ("127.0.0.1", 80, 8000),
        ("::1", 1, 2),
    ]
    long = {"ports": [{"target": 8000, "published": "8001", "host_ip": "127.0.0.1"}]}
    assert published_ports(long) == [("127.0.0.1", 8001, 8000)]
    assert published_ports({"ports": [{"target": 1, "published": 1}]}) == [(None, 1, 1)]
    assert parse_duration("90s") == 90 and parse_duration("1m30s") == 90
    assert parse_duration("1.5s") == 1.5 and parse_duration("500ms") == 0.5
    for bad in ("90", "1 m", "s", "1m30"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert image_tag("redis:7.4.5") == ("redis", "7.4.5")
    assert image_tag("registry:5000/team/app") == ("registry:5000/team/app", None)
    assert image_tag("registry:5000/app:1.2.3@sha256:ab") == ("registry:5000/app", "1.2.3")
    assert FULL_VERSION.fullmatch("3.11.13-slim-bookworm")
    assert not FULL_VERSION.fullmatch("7") and not FULL_VERSION.fullmatch("3.11-slim")
