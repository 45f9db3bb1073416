"""The ``tracking:`` config section (validated with the rest of the config, without MLflow)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from ..plugin import Section

URI_SCHEMES = ("http://", "https://", "sqlite:///", "file:")


class MlflowSettings(Section):
    uri: str = Field(description="a tracking server (http[s]://host:port), sqlite:///path/to/mlflow.db, or a local "
                                 "directory (visionkit keeps an SQLite store in it: DIR/mlflow.db)")
    experiment: str = Field("visionkit", min_length=1, description="created if missing")
    run_name: Optional[str] = Field(None, description="null: the run directory's name")

    @field_validator("uri")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give a tracking server URL, sqlite:///FILE or a local directory")
        scheme = value.split("://", 1)[0] + "://" if "://" in value else ""
        if scheme and not value.startswith(URI_SCHEMES):
            raise ValueError(f"{scheme} is not a tracking URI visionkit takes: give http(s)://HOST:PORT, "
                             "sqlite:///FILE or a local directory")
        return value


class TrackingConfig(Section):
    mlflow: Optional[MlflowSettings] = None
