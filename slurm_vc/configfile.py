"""The site config file without its pydantic models: where it is, reading its TOML, and the catalog.

Importing pydantic and building the models of :mod:`slurm_vc.config` costs ~0.1 s, which the
submit-time check (``slurm-vc validate-request``, run by the SPANK plugin inside every ``sbatch``)
and the TaskProlog (run before every task) should not pay: they need only the image names and
``state_dir``.  Everything here is standard library; :mod:`slurm_vc.config` builds on it, so both
read the file the same way and report the same errors.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on old Pythons
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/slurm/vcluster.toml"
CONFIG_ENV = "SLURM_VC_CONFIG"
IMAGE_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}\Z"  # \Z: "$" would allow a final newline
PAGE_SIZES = {"2M": 2 * 1024 * 1024, "1G": 1024 * 1024 * 1024, "none": 0}


# A site config is a few KiB; anything far larger is not one (and is not read into memory).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def config_path(explicit: Optional[str] = None) -> str:
    """The config file to read: ``--config``, then ``$SLURM_VC_CONFIG``, then the default."""
    if explicit is not None and not explicit.strip():
        raise ConfigError(
            "--config: the path is empty (give the site config file, e.g. /etc/slurm/vcluster.toml)"
        )
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read_toml(path: str) -> dict:
    """The parsed TOML of the site config at ``path``.  ConfigError names the file and the problem."""
    try:
        # stat first: opening a FIFO would block, and a device (/dev/zero) never ends.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{path}: not a regular file (the site config must be a TOML file)")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)  # one byte more tells a file that is too large
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: too large for a site config (at most {MAX_CONFIG_BYTES} bytes)")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found (set {CONFIG_ENV} or pass --config)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None


@dataclass(frozen=True)
class Catalog:
    """The image names of a site config: all that a ``--vcluster`` value is checked against at submit."""

    images: frozenset[str]
    source: str


def catalog_from_mapping(data: dict, source: str) -> Optional[Catalog]:
    """The catalog of a parsed site config, or None when its ``images`` table is not well formed.

    Pure.  Only the shape the request check relies on is examined (a table of tables with valid
    names); a None sends the caller to the full validation, which names the key and what is allowed.
    """
    images = data.get("images", {})
    if not isinstance(images, dict):
        return None
    for name, entry in images.items():
        if not isinstance(entry, dict) or not re.match(IMAGE_NAME_RE, name):
            return None
    return Catalog(images=frozenset(images), source=source)
