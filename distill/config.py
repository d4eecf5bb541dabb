"""Typed configs: dataclass defaults, then a YAML file, then ``key=value`` overrides (omegaconf)."""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scenes.data import DATA_ROOT

T = TypeVar("T")


@dataclass
class DataSpec:
    """Where a training command finds the world's train split (made on first use)."""

    root: str = DATA_ROOT  # dataset root
    train_count: int = 4000  # training objects


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate YAML files from ``key=value`` overrides; anything else is an error."""
    files, overrides = [], []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif a.endswith((".yaml", ".yml")):
            files.append(a)
        else:
            raise ConfigError(
                f"argument {a!r} is neither a config file (*.yaml) nor a key=value override"
            )
    return files, overrides


def _explain(e: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    msg = str(e).splitlines()[0]
    if "Key" in type(e).__name__ or "not in" in msg:
        return ConfigError(f"unknown config key '{key}' (from {source}): {msg}")
    return ConfigError(f"bad value for config key '{key}' (from {source}): {msg}")


def load_config(schema: type[T], args: list[str] | None = None, base: dict | None = None) -> T:
    """Build a ``schema`` instance from defaults, optional ``base`` dict, YAML files, overrides."""
    if not is_dataclass(schema):
        raise TypeError("schema must be a dataclass")
    files, overrides = split_args(list(args or []))
    cfg = OmegaConf.structured(schema)
    layers: list[tuple[str, Any]] = []
    if base:
        layers.append(("defaults", OmegaConf.create(base)))
    for f in files:
        p = Path(f)
        if not p.exists():
            raise ConfigError(f"config file {f} not found")
        loaded = OmegaConf.load(p)
        if loaded is None:
            continue
        layers.append((str(p), loaded))
    if overrides:
        try:
            # `key=` means the empty string (omegaconf alone would read it as null)
            overrides = [o + "''" if o.endswith("=") else o for o in overrides]
            layers.append(("command line", OmegaConf.from_dotlist(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse overrides {overrides}: {e}") from e
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise _explain(e, source) from e
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, "resolved config") from e


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, run_dir: str | Path) -> Path:
    """Write the resolved config to ``run_dir/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
