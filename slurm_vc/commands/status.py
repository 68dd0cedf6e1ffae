"""``slurm-vc status``: inside a --vcluster job, each guest's node, name, IP, state, seconds to ready.

Each node publishes only its own guest's state, so the other nodes are asked through an overlapping
job step on the hosts (``--local --json`` on each node).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="only this node's guest (used internally)")
    parser.add_argument("--json", action="store_true", help="one JSON object per guest")


def _local_record(view) -> dict:
    guest = view.local_guest
    return {
        "index": guest.index if guest else None,
        "node": view.node,
        "hostname": guest.hostname if guest else None,
        "ip": guest.ip if guest else None,
        "state": view.local.state,
        "seconds_to_ready": view.local.seconds_to_ready,
        "error": view.local.error,
    }


def parse_records(text: str) -> dict[str, dict]:
    """node -> record from the ``--local --json`` lines of every node (other lines ignored)."""
    records = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("node"):
            records[record["node"]] = record
    return records


def merge(view, remote: dict[str, dict]) -> list[dict]:
    """One row per guest, in node order: the node's own record, or 'unknown' when it did not answer."""
    rows = []
    for guest in view.guests:
        record = remote.get(guest.node) or {}
        rows.append(
            {
                "index": guest.index,
                "node": guest.node,
                "hostname": guest.hostname,
                "ip": guest.ip,
                "state": record.get("state", "unknown"),
                "seconds_to_ready": record.get("seconds_to_ready"),
                "error": record.get("error"),
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'INDEX':<6}{'NODE':<16}{'HOSTNAME':<24}{'IP':<16}{'STATE':<10}READY_S"]
    for row in rows:
        ready = "-" if row["seconds_to_ready"] is None else f"{row['seconds_to_ready']:.1f}"
        lines.append(
            f"{row['index']:<6}{row['node']:<16}{row['hostname']:<24}{row['ip']:<16}{row['state']:<10}{ready}"
        )
        if row.get("error"):
            lines.append(f"      {row['error']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import SlurmError
    from ..jobenv import load_current

    view = load_current(config_path=args.config)
    if args.local:
        print(json.dumps(_local_record(view), sort_keys=True))
        return 0
    remote = {view.node: _local_record(view)}
    others = [guest.node for guest in view.guests if guest.node != view.node]
    if others:
        from .. import slurm

        argv = [sys.executable, "-m", "slurm_vc", "status", "--local", "--json"]
        if args.config:
            argv[3:3] = ["--config", args.config]
        try:
            remote.update(parse_records(slurm.run_on_job_nodes(view.job_id, others, argv)))
        except SlurmError as exc:
            print(f"slurm-vc status: cannot ask the other nodes: {exc}", file=sys.stderr)
    rows = merge(view, remote)
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        print(format_rows(rows))
    return 0 if all(row["state"] == "ready" for row in rows) else 1
