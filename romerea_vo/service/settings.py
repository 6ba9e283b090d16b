"""The service's configuration: `ServiceConfig`, and the operator's TOML file.

``romerea-vo serve --config service.toml`` reads a file with three tables::

    [service]    where the data is, where the service listens, how it is published
    [metadata]   what the landing page and the registry record say about the service
    [limits]     every field of `TapLimits` (MAXREC, upload size, durations, retention, ...)

Every key and its default is listed in ``services/service.toml``. The keys are the
fields of the dataclasses below, so a limit added to `TapLimits` is configurable the
moment it exists; `read_settings` checks names and types and raises `ConfigError`
naming the offending key, before anything starts. Command-line flags override the file.
Worker processes (``serve --workers N``) read the effective settings from a TOML file
the parent writes (`write_settings`), the same format the operator writes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .tap import TapLimits

__all__ = [
    "LOG_LEVELS",
    "ConfigError",
    "ServerSettings",
    "ServiceConfig",
    "ServiceMetadata",
    "Settings",
    "configure_logging",
    "read_settings",
    "settings_from_dict",
    "settings_toml",
    "write_settings",
]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class ConfigError(InvalidRequestError):
    """A configuration file that cannot be read, or a key or value in it that is wrong."""


@dataclass
class ServiceMetadata:
    """What the service says about itself (landing page, registry record)."""

    title: str = "ROME/REA field data products"
    description: str = (
        "Star catalogues, per-star lightcurve statistics and lightcurves of the ROME/REA "
        "microlensing survey of the Galactic bulge (LCO 1 m network, g', r', i')."
    )
    contact_name: str = ""
    contact_email: str = ""
    authority: str = ""
    """IVOA authority of the service's registry identifiers (ivo://...); empty: the one
    the fields were ingested with."""


@dataclass
class ServerSettings:
    """Where the data is and how the service runs (the ``[service]`` table)."""

    db: str = ""
    """A DuckDB file made by ``romerea-vo ingest``, or a ``postgresql://`` URL."""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    job_threads: int = 2
    work_dir: str = ""
    """Where async jobs and uploads live; empty: a temporary directory."""
    jobs_db: str = ""
    """PostgreSQL URL of a job store shared by several workers; empty: in-process."""
    public_url: str = ""
    """The URL clients reach the service at (behind a reverse proxy); empty: each
    request's own URL."""
    allowed_hosts: tuple[str, ...] = ()
    """Host header values answered (``*.example.org`` patterns allowed); others get a
    400. Empty: any."""
    log_level: str = "warning"


@dataclass
class Settings:
    """The whole configuration file."""

    service: ServerSettings = field(default_factory=ServerSettings)
    metadata: ServiceMetadata = field(default_factory=ServiceMetadata)
    limits: TapLimits = field(default_factory=TapLimits)


@dataclass
class ServiceConfig:
    """What the service serves and where it keeps its scratch files."""

    db_path: Path | str
    """A DuckDB file, or a ``postgresql://`` URL."""
    work_dir: Path | None = None
    limits: TapLimits = field(default_factory=TapLimits)
    max_workers: int = 2
    metadata: ServiceMetadata = field(default_factory=ServiceMetadata)
    jobs_db: str | None = None
    """PostgreSQL connection string of a UWS job store shared by several service processes
    (`PostgresJobStore`); ``work_dir`` must then be a directory they all share."""
    public_url: str | None = None
    """Root URL the service is published at (e.g. behind a reverse proxy); when unset,
    each request's own URL is used."""
    allowed_hosts: tuple[str, ...] = ()
    """Host header values the service answers (empty: any)."""

    @property
    def title(self) -> str:
        return self.metadata.title

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceConfig:
        """The service configuration the server part of ``settings`` describes."""
        server = settings.service
        if not server.db:
            raise ConfigError("no database: give [service] db in the file, or --db")
        db = server.db
        return cls(
            db_path=db if db.startswith(("postgresql://", "postgres://")) else Path(db),
            work_dir=Path(server.work_dir) if server.work_dir else None,
            limits=settings.limits,
            max_workers=server.job_threads,
            metadata=settings.metadata,
            jobs_db=server.jobs_db or None,
            public_url=server.public_url.rstrip("/") or None,
            allowed_hosts=server.allowed_hosts,
        )

    def to_settings(self) -> Settings:
        """The `Settings` that `from_settings` turns back into this configuration."""
        return Settings(
            service=ServerSettings(
                db=str(self.db_path),
                job_threads=self.max_workers,
                work_dir=str(self.work_dir or ""),
                jobs_db=self.jobs_db or "",
                public_url=self.public_url or "",
                allowed_hosts=self.allowed_hosts,
            ),
            metadata=self.metadata,
            limits=self.limits,
        )


_SECTIONS: dict[str, type] = {
    "service": ServerSettings,
    "metadata": ServiceMetadata,
    "limits": TapLimits,
}


def read_settings(path: Path | str) -> Settings:
    """The settings in the TOML file ``path``, defaults for what it leaves out.

    Raises `ConfigError` (one line, naming the file and key) when the file cannot be read
    or parsed, or holds an unknown table or key or a value of the wrong type.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from_dict(data, source=str(path))


def settings_from_dict(data: dict[str, Any], *, source: str = "configuration") -> Settings:
    """`Settings` from parsed TOML; raises `ConfigError` as `read_settings` does."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{source}: unknown table [{name}]{_suggest(name, _SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table, [{name}]")
        sections[name] = _section(_SECTIONS[name], name, table, source)
    settings = Settings(**sections)
    _check(settings, source)
    return settings


def _section(cls: type, name: str, table: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r} in [{name}]{_suggest(key, known)}")
        values[key] = _typed(value, hints[key], f"[{name}] {key}", source)
    return cls(**values)


def _typed(value: Any, hint: Any, where: str, source: str) -> Any:
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a TOML array of strings
        # (a tuple: the value of a setting already read, checked again with overrides)
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{source}: {where} must be an array of strings, not {value!r}")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(t for t in allowed if t is not type(None))
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    wanted = " or ".join({bool: "true/false", int: "an integer", float: "a number",
                          str: "a string"}.get(t, t.__name__) for t in allowed)  # fmt: skip
    raise ConfigError(f"{source}: {where} must be {wanted}, not {value!r}")


def _check(settings: Settings, source: str) -> None:
    """Values that have the right type but cannot work."""
    server, limits = settings.service, settings.limits
    if server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{source}: [service] log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"not {server.log_level!r}"
        )
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"{source}: [service] port must be 0-65535, not {server.port}")
    for key in ("workers", "job_threads"):
        if getattr(server, key) < 1:
            raise ConfigError(f"{source}: [service] {key} must be 1 or more")
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{source}: [limits] {f.name} must not be negative")
    pairs = [
        ("default_maxrec", "hard_maxrec"),
        ("default_execution_duration", "hard_execution_duration"),
        ("default_retention", "hard_retention"),
    ]
    for low, high in pairs:
        if getattr(limits, low) > getattr(limits, high):
            raise ConfigError(f"{source}: [limits] {low} must not exceed {high}")


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def settings_toml(settings: Settings) -> str:
    """``settings`` as a TOML file that `read_settings` reads back to equal settings."""
    lines = []
    for name in _SECTIONS:
        lines.append(f"[{name}]")
        for key, value in dataclasses.asdict(getattr(settings, name)).items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are a subset of TOML's
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def write_settings(settings: Settings, path: Path) -> None:
    """Write ``settings`` to ``path`` (for worker processes to `read_settings`)."""
    path.write_text(settings_toml(settings), encoding="utf-8")


def configure_logging(level: str) -> None:
    """Send the service's own log (``romerea_vo.*``) to stderr at ``level`` and above
    (uvicorn's loggers are configured by uvicorn, from the same level)."""
    logger = logging.getLogger("romerea_vo")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
