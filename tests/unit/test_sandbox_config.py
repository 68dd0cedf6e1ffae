"""The sandbox's pure parts: layout (names, subnets, ports), slurm.conf, site configs, hook wrappers."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_vc.config import config_from_mapping
from slurm_vc.errors import UsageError
from slurm_vc.sandbox.cluster import (
    _has_job_state,
    catalog_images,
    find_hook_executables,
    hook_role,
    spank_args,
)
from slurm_vc.sandbox.layout import MAX_NODES, layout_for, node_memory_mb, node_names, validate_name
from slurm_vc.sandbox.render import (
    READY_TIMEOUT,
    Hooks,
    SiteOptions,
    render_hook_wrapper,
    render_launcher,
    render_plugstack_conf,
    render_slurm_conf,
    site_config_mapping,
    to_toml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def conf_lines(text: str) -> dict[str, list[str]]:
    """slurm.conf as key -> list of values (NodeName repeats)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", ["vcsbx", "a", "abcdefgh", "x1"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "abcdefghi", "1abc", "Vc", "a-b", "a_b", "a b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid sandbox name"):
        validate_name(name)


def test_layout_is_deterministic_and_names_fit_linux_limits() -> None:
    layout = layout_for("abcdefgh", root="/r")
    assert layout == layout_for("abcdefgh", root="/r")
    names = [layout.control_bridge, layout.fabric_bridge, layout.guest_bridge]
    names += [layout.control_veth(MAX_NODES), layout.fabric_veth(MAX_NODES)]
    assert all(len(name) <= 15 for name in names), names
    assert all(name.startswith(layout.link_prefix) for name in names)
    assert layout.netns("node3").startswith(layout.netns_prefix)
    assert layout.base == Path("/r/abcdefgh")


def test_subnets_are_private_disjoint_and_avoid_the_default_guest_subnet() -> None:
    layout = layout_for("vcsbx")
    assert 200 <= layout.octet <= 249
    control = layout.control_subnet
    guests = ipaddress.IPv4Network(layout.guest_subnet)
    assert control.is_private and guests.is_private
    assert not control.overlaps(guests)
    assert control.subnet_of(layout.sandbox_net) and guests.subnet_of(layout.sandbox_net)
    assert not layout.sandbox_net.overlaps(ipaddress.IPv4Network("10.96.0.0/12"))
    assert ipaddress.IPv4Address(layout.host_address) in control
    assert {layout.node_address(i) for i in range(1, MAX_NODES + 1)}.isdisjoint({layout.host_address})


def test_node_addresses_on_the_guest_bridge_are_in_the_host_block() -> None:
    layout = layout_for("vcsbx")
    guests = ipaddress.IPv4Network(layout.guest_subnet)
    host_block = next(guests.subnets(new_prefix=24))  # docs/network.md: block 0, never a job's
    addresses = [ipaddress.IPv4Interface(layout.guest_host_address(i)) for i in range(1, MAX_NODES + 1)]
    assert all(a.ip in host_block and a.network == guests for a in addresses)
    assert len(set(addresses)) == MAX_NODES


def test_different_names_usually_get_different_subnets_ports_and_job_ids() -> None:
    layouts = [layout_for(f"sb{i}") for i in range(20)]
    octets = {layout.octet for layout in layouts}
    assert len(octets) > 10  # a hash spread, not a constant
    for layout in layouts:
        assert layout.ctld_port == layout_for(layout.name).ctld_port
        assert 1024 < layout.ctld_port < 65536
    assert len({layout.first_job_id for layout in layouts}) == len(octets)


def test_node_names_bounds() -> None:
    assert node_names(3) == ["node1", "node2", "node3"]
    with pytest.raises(UsageError):
        node_names(0)
    with pytest.raises(UsageError):
        node_names(MAX_NODES + 1)


@pytest.mark.parametrize(
    ("total_mb", "nodes", "expected"),
    [(24105, 3, 3840), (24105, 1, 3840), (24105, 12, 768), (2048, 3, 512), (65536, 3, 4096)],
)
def test_node_memory(total_mb: int, nodes: int, expected: int) -> None:
    assert node_memory_mb(total_mb, nodes) == expected


def test_slurm_conf_has_the_lines_the_project_relies_on() -> None:
    layout = layout_for("vcsbx", root="/r")
    hooks = Hooks(prolog="/r/vcsbx/bin/prolog", epilog="/e", task_prolog="/t", plugstack="/p")
    conf = conf_lines(render_slurm_conf(layout, node_names(3), 4096, hooks))
    assert conf["Prolog"] == ["/r/vcsbx/bin/prolog"]
    assert conf["Epilog"] == ["/e"]
    assert conf["TaskProlog"] == ["/t"]
    assert conf["PlugStackConfig"] == ["/p"]
    assert conf["PrologFlags"] == ["Alloc,DeferBatch"]  # Contain needs proctrack/cgroup
    assert conf["ProctrackType"] == ["proctrack/linuxproc"]
    prolog_timeout = int(conf["PrologEpilogTimeout"][0])
    assert (
        int(conf["BatchStartTimeout"][0]) > prolog_timeout
    )  # else a batch job with a slow prolog is "missing"
    assert READY_TIMEOUT < prolog_timeout  # the prolog's own timeout fires first, with its message
    assert conf["ReturnToService"] == ["2"]
    # Slurm 24.11's slurmctld logs an error when UnkillableStepTimeout < 5 x MessageTimeout.
    assert int(conf["UnkillableStepTimeout"][0]) >= 5 * int(conf["MessageTimeout"][0])
    assert conf["SchedulerParameters"] == ["batch_sched_delay=0,sched_min_interval=0"]
    assert conf["AuthInfo"] == [f"socket={layout.munge_socket}"]
    assert conf["SlurmctldHost"] == [f"{layout.ctld_hostname}({layout.host_address})"]
    assert conf["SlurmctldPort"] == [str(layout.ctld_port)]
    assert "%n" in conf["SlurmdSpoolDir"][0] and "%n" in conf["SlurmdLogFile"][0]
    assert all(value.startswith("/r/vcsbx/") for value in conf["StateSaveLocation"])
    nodes = conf["NodeName"]
    assert [n.split()[0] for n in nodes] == ["node1", "node2", "node3"]
    for index, node in enumerate(nodes, start=1):
        fields = dict(part.split("=", 1) for part in node.split()[1:])
        assert fields["NodeAddr"] == layout.node_address(index)
        assert fields["CPUs"] == "2" and fields["Sockets"] == "1" and fields["CoresPerSocket"] == "2"
        # Slurm may allocate only the node's own host CPU (round-robin), so guests spread.
        assert fields["CpuSpecList"] == {1: "1", 2: "0", 3: "1"}[index]
        assert fields["RealMemory"] == "4096"
    assert conf["PartitionName"][0].startswith("vc Nodes=node1,node2,node3 Default=YES")


def test_slurm_conf_leaves_out_hooks_that_are_missing() -> None:
    conf = conf_lines(render_slurm_conf(layout_for("vcsbx"), ["node1"], 1024, Hooks()))
    for key in ("Prolog", "Epilog", "TaskProlog", "PlugStackConfig"):
        assert key not in conf


def test_slurm_conf_avoids_options_removed_after_22_05() -> None:
    text = render_slurm_conf(layout_for("vcsbx"), ["node1"], 1024, Hooks())
    for removed in ("FastSchedule", "ControlMachine", "CacheGroups", "SchedulerPort", "CryptoType="):
        assert removed not in text


@pytest.mark.parametrize("node", [None, "node1", "node2"])
def test_site_configs_validate(node: str | None, tmp_path: Path) -> None:
    layout = layout_for("vcsbx", root=str(tmp_path))
    options = SiteOptions(images=catalog_images(tmp_path / "out"), guest_mtu=9000)
    text = to_toml(site_config_mapping(layout, node, options))
    config = config_from_mapping(tomllib.loads(text), source="sandbox")
    assert config.host.domain_type == "qemu"
    assert config.host.lock_memory is False
    assert config.timeouts.ready == READY_TIMEOUT
    assert config.host.hugepage_size == "2M"
    assert config.network.bridge == layout.guest_bridge
    assert config.network.subnet == layout.guest_subnet
    assert config.network.mtu == 9000
    assert set(config.images) == {"tiny", "centos7-hpc", "null"}
    null = config.images["null"]
    assert (null.kernel, null.initrd) == (str(tmp_path / "out" / "null-guest.bin"), None)
    assert null.default_memory == 32 * 1024 * 1024
    assert config.images["centos7-hpc"].kernel == str(tmp_path / "out" / "vmlinuz")
    assert config.images["tiny"].seed == "both"
    assert config.images["tiny"].readiness.probe == "serial"
    if node:
        assert config.host.libvirt_uri == layout.libvirt_uri(node)
        assert config.state_dir == str(layout.node_state_dir(node))


def test_node_configs_differ_only_where_they_must(tmp_path: Path) -> None:
    layout = layout_for("vcsbx", root=str(tmp_path))
    one = site_config_mapping(layout, "node1", SiteOptions())
    two = site_config_mapping(layout, "node2", SiteOptions())
    assert one["host"]["libvirt_uri"] != two["host"]["libvirt_uri"]
    assert one["state_dir"] != two["state_dir"]
    assert one["network"] == two["network"]
    # One kernel, but each node keeps its own hugepage ledgers, out of the real /run/slurm-vc.
    assert one["runtime_dir"] == str(layout.node_runtime_dir("node1")) == "/run/slurm-vc-sandbox/vcsbx/node1"
    assert two["runtime_dir"] == "/run/slurm-vc-sandbox/vcsbx/node2"
    assert (
        site_config_mapping(layout, None, SiteOptions())["runtime_dir"] == "/run/slurm-vc-sandbox/vcsbx/login"
    )
    assert layout_for("vcsbx", run_root="/r").node_runtime_dir("node1") == Path("/r/vcsbx/node1")


def test_toml_writer_round_trips() -> None:
    data = {
        "a": 1,
        "b": 'x"y\\z',
        "c": True,
        "d": [1, 2],
        "t": {"e": 2.5, "u": {"f": "g"}},
        "images": {"my-image": {"readiness": {"probe": "tcp", "tcp_port": 22}}},
    }
    assert tomllib.loads(to_toml(data)) == data


def test_hook_wrapper_picks_the_node_config_and_keeps_path(tmp_path: Path) -> None:
    layout = layout_for("vcsbx", root=str(tmp_path))
    target = tmp_path / "show-env"
    target.write_text('#!/bin/sh\necho "$SLURM_VC_CONFIG|$SLURM_CONF|$PATH|$*"\n')
    target.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(render_hook_wrapper(layout, ["/venv/bin", "/usr/bin"], [str(target)]))
    wrapper.chmod(0o755)
    env = {"SLURMD_NODENAME": "node2", "PATH": "/user/bin"}
    out = subprocess.run([str(wrapper), "a b", "c"], env=env, capture_output=True, text=True, check=True)
    config, slurm_conf, path, args = out.stdout.strip().split("|")
    assert config == str(layout.node_config("node2"))
    assert slurm_conf == str(layout.slurm_conf)
    assert path.split(":") == ["/user/bin", "/venv/bin", "/usr/bin"]
    assert args == "a b c"
    missing = subprocess.run([str(wrapper)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert missing.returncode != 0 and "SLURMD_NODENAME" in missing.stderr


@pytest.mark.parametrize(
    ("filename", "role"),
    [
        ("slurm-vc-prolog", "prolog"),
        ("slurm-vc-task-prolog", "task-prolog"),
        ("taskprolog", "task-prolog"),
        ("slurm-vc-epilog", "epilog"),
        ("slurm-vc-exec", "exec"),
        ("README", None),
        ("Makefile", None),
    ],
)
def test_hook_roles(filename: str, role: str | None) -> None:
    assert hook_role(filename) == role


def test_find_hooks_needs_executables(tmp_path: Path) -> None:
    (tmp_path / "prolog").mkdir()
    (tmp_path / "epilog").mkdir()
    for name, mode in (("prolog/slurm-vc-prolog", 0o755), ("prolog/slurm-vc-task-prolog", 0o755)):
        (tmp_path / name).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / name, mode)
    (tmp_path / "epilog/slurm-vc-epilog").write_text("not executable")
    os.chmod(tmp_path / "epilog/slurm-vc-epilog", 0o644)
    found = find_hook_executables(tmp_path)
    assert found == {
        "prolog": str(tmp_path / "prolog/slurm-vc-prolog"),
        "task-prolog": str(tmp_path / "prolog/slurm-vc-task-prolog"),
    }


def test_plugstack_line_and_args() -> None:
    layout = layout_for("vcsbx", root="/r")
    args = spank_args(layout, str(layout.launcher), "/r/vcsbx/hooks/slurm-vc-exec")
    assert f"config={layout.login_config}" in args
    assert "wrapper=/r/vcsbx/hooks/slurm-vc-exec" in args
    assert f"validator={layout.launcher}" in args
    assert all("=" in arg for arg in args)
    assert "wrap=0" in spank_args(layout, str(layout.launcher), None)
    line = render_plugstack_conf("/x/vcluster.so", args)
    assert line.startswith("required /x/vcluster.so validator=/") and line.endswith("\n")


def test_layout_libvirt_socket_matches_the_launcher(tmp_path: Path) -> None:
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    layout = layout_for("vcsbx", root=str(tmp_path))
    daemon = PrivateLibvirtd("node2", layout.libvirt_dir, netns=layout.netns("node2"))
    assert daemon.socket_path == layout.libvirt_socket("node2")
    assert daemon.uri == layout.libvirt_uri("node2")
    assert daemon.qemu_log_dir == layout.libvirt_log_dir("node2")


def test_launcher_runs_slurm_vc_isolated_with_the_given_python_and_path(tmp_path: Path) -> None:
    """The sandbox's bin/slurm-vc, run the way a job runs it: a user's PYTHONPATH and PYTHONHOME and
    a json.py in the working directory do not reach it; the sandbox's own path entries do."""
    import sys

    repo = Path(__file__).resolve().parents[2]
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "json.py").write_text("raise SystemExit('user json.py imported!')\n")
    (job_dir / "slurm_vc").mkdir()
    (job_dir / "slurm_vc" / "__init__.py").write_text("raise SystemExit('user slurm_vc imported!')\n")
    launcher = tmp_path / "slurm-vc"
    launcher.write_text(render_launcher(sys.executable, [str(repo)]))
    launcher.chmod(0o755)
    env = {"PYTHONPATH": str(job_dir), "PYTHONHOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(launcher), "--version"], env=env, cwd=job_dir, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("slurm-vc "), out.stderr
    out = subprocess.run(
        [str(launcher), "hosts", "--help"], env=env, cwd=job_dir, capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: slurm-vc hosts" in out.stdout, out.stderr
    # arguments reach slurm_vc unchanged, spaces included
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "-I -c" ] && shift 3\nprintf "%s|" "$@"\n')
    fake.chmod(0o755)
    launcher.write_text(render_launcher(str(fake)))
    out = subprocess.run([str(launcher), "hosts", "a b"], env={}, capture_output=True, text=True)
    assert out.stdout == "hosts|a b|", out.stdout


def test_process_identity_survives_only_with_the_same_start_time() -> None:
    from slurm_vc.sandbox import procs

    me = procs.ref_of(os.getpid())
    assert me is not None and procs.alive(me)
    assert not procs.alive(procs.ProcRef(me.pid, me.start + 1))  # a recycled PID is another process
    assert procs.ProcRef.from_json(me.to_json()) == me


def test_state_is_written_at_once_and_survives_garbage(tmp_path: Path) -> None:
    from slurm_vc.sandbox.state import SandboxState

    path = tmp_path / "state.json"
    state = SandboxState(path)
    state.add_to("netns", "a")
    state.add_to("netns", "a")
    state.record_proc("munged", {"pid": 1, "start": 2})
    again = SandboxState.load(path)
    assert again.data == {"netns": ["a"], "procs": {"munged": {"pid": 1, "start": 2}}}
    path.write_text("{not json")
    assert SandboxState.load(path).data == {}
    assert SandboxState.load(tmp_path / "missing.json").data == {}


def test_job_leftovers_include_ledgers_in_the_node_runtime_dir(tmp_path: Path) -> None:
    layout = layout_for("vcsbx", root=str(tmp_path / "lib"), run_root=str(tmp_path / "run"))
    state, runtime = layout.node_state_dir("node1"), layout.node_runtime_dir("node1")
    assert not _has_job_state(state, runtime)  # nothing made yet
    (runtime / "hugepages").mkdir(parents=True)
    (runtime / "hugepages" / ".lock").write_text("")
    (runtime / "hugepages" / ".7.json.123.tmp").write_text("")
    assert not _has_job_state(state, runtime)  # the lock and a temporary file are no job's
    (runtime / "hugepages" / "7.held.json").write_text("{}")
    assert _has_job_state(state, runtime)
