"""``slurm-vc validate-request VALUE``: the submit-time check the SPANK plugin runs on login nodes.

It runs inside every ``sbatch --vcluster``, so it stays light: the value is checked against the
catalog's image names read straight from the TOML (:mod:`slurm_vc.configfile`), without importing
pydantic.  Only a catalog whose shape is not understood goes through the full validation of the
site config, which then names the key and what is allowed.  The prolog validates the whole file
on the compute node anyway, and ``slurm-vc doctor`` checks it for the admin.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("value", help="the --vcluster value")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from ..configfile import catalog_from_mapping, config_path, read_toml
    from ..request import parse_request

    path = config_path(args.config)
    catalog = catalog_from_mapping(read_toml(path), path)
    if catalog is None:
        from ..config import load_config

        catalog = load_config(path)  # raises the precise ConfigError
    request = parse_request(args.value, catalog)
    if not args.quiet:
        print(request.to_spec())
    return 0
