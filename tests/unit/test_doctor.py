"""doctor checks against recorded host trees in tmp_path (the live host is exercised by e2e)."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

from slurm_vc import doctor
from slurm_vc.config import config_from_mapping
from slurm_vc.doctor import (
    FAIL,
    PASS,
    WARN,
    HostPaths,
    check_bridge,
    check_hugepages,
    check_images,
    check_kvm_access,
    check_runtime_dir,
    check_slurm,
    check_virtualisation,
    format_table,
    run_checks,
)
from slurm_vc.qemu_access import user_named


def make_host(tmp_path: Path, *, flags="vmx", pvm=False, kvm=True, hugetlbfs=True) -> HostPaths:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir(parents=True)
    (proc / "cpuinfo").write_text(f"processor : 0\nflags : fpu {flags} sse\n")
    mounts = "none /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n" if hugetlbfs else ""
    (proc / "mounts").write_text("proc /proc proc rw 0 0\n" + mounts)
    if pvm:
        (sys / "module" / "kvm_pvm").mkdir(parents=True)
    pool = sys / "devices/system/node/node0/hugepages/hugepages-2048kB"
    pool.mkdir(parents=True)
    (pool / "nr_hugepages").write_text("4\n")
    (pool / "free_hugepages").write_text("4\n")
    (sys / "devices/system/node/node0/meminfo").write_text("Node 0 MemFree:        4194304 kB\n")
    dev_kvm = tmp_path / "kvm"
    if kvm:
        dev_kvm.write_text("")
    return HostPaths(
        proc=str(proc),
        sys=str(sys),
        dev_kvm=str(dev_kvm),
        slurm_conf=str(tmp_path / "slurm.conf"),
        slurm_configless=str(tmp_path / "run-slurm-conf"),
        qemu_conf=str(tmp_path / "qemu.conf"),
    )


def config(**host):
    return config_from_mapping(
        {"host": host, "network": {"mtu": 9000}, "images": {"a": {"kernel": "/nonexistent"}}}
    )


def test_virtualisation_pass_fail_and_pvm(tmp_path):
    assert check_virtualisation(config(), make_host(tmp_path / "a")).status == PASS
    pvm = check_virtualisation(config(), make_host(tmp_path / "b", flags="", pvm=True))
    assert pvm.status == FAIL and "kvm-pvm" in pvm.detail and "domain_type" in pvm.fix
    assert check_virtualisation(config(), make_host(tmp_path / "c", kvm=False)).status == FAIL
    assert check_virtualisation(config(domain_type="qemu"), make_host(tmp_path / "d")).status == WARN


def test_hugepages_mount_and_headroom(tmp_path):
    checks = check_hugepages(config(), make_host(tmp_path / "a"))
    assert [c.status for c in checks] == [PASS, PASS]
    assert "room for about 2048 more" in checks[1].detail
    missing = check_hugepages(config(), make_host(tmp_path / "b", hugetlbfs=False))
    assert missing[0].status == FAIL and "pagesize=2M" in missing[0].fix
    one_gig = check_hugepages(config(hugepage_size="1G"), make_host(tmp_path / "c"))
    assert [c.status for c in one_gig] == [FAIL, FAIL]


def test_bridge_missing_and_small_mtu(tmp_path, monkeypatch):
    from slurm_vc import netdev

    links = {"vcbr0": {"mtu": 9000, "flags": ["UP"], "linkinfo": {"info_kind": "bridge"}}}
    monkeypatch.setattr(netdev, "link_info", lambda name, netns=None: links.get(name))
    host = make_host(tmp_path)
    good = check_bridge(config(), host)
    assert good.status == PASS and "MTU 9000" in good.detail
    links["vcbr0"]["mtu"] = 1500
    small = check_bridge(config(), host)
    assert small.status == FAIL and "1500" in small.detail and "9000" in small.detail
    assert "ip link set vcbr0 mtu 9000" in small.fix
    other = config_from_mapping({"network": {"bridge": "nosuchbr"}})
    missing = check_bridge(other, host)
    assert missing.status == FAIL and "does not exist" in missing.detail and "network.bridge" in missing.fix


def test_images_unreadable(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_text("k")
    good = config_from_mapping(
        {"images": {"ok": {"kernel": str(image)}, "bad": {"disk": "/nonexistent.qcow2"}}}
    )
    results = {c.name: c.status for c in check_images(good, make_host(tmp_path / "a"))}
    assert results == {"image bad": FAIL, "image ok": PASS}
    private = tmp_path / "private.qcow2"
    private.write_bytes(b"QFI\xfb")
    private.chmod(0o600)
    [check] = check_images(
        config_from_mapping({"images": {"p": {"disk": str(private)}}}), make_host(tmp_path / "b")
    )
    # The wording names QEMU's user when this host knows it (libvirt-qemu on Debian), else "world".
    assert check.status == FAIL and check.fix == f"chmod o+r {private}"
    assert "world-readable" in check.detail or "is not readable by QEMU's user" in check.detail


def test_slurm_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)
    host = make_host(tmp_path)
    assert check_slurm(config(), host)[0].status == FAIL
    (tmp_path / "plugstack.conf").write_text("required /usr/lib/slurm/slurm_vc.so\n")
    Path(host.slurm_conf).write_text(
        "Prolog=/usr/libexec/slurm-vc/slurm-vc-prolog\nEpilog=/usr/libexec/slurm-vc/slurm-vc-epilog\n"
        "TaskProlog=/usr/libexec/slurm-vc/slurm-vc-task-prolog\nPrologFlags=Alloc,Contain,DeferBatch\n"
    )
    assert all(c.status == PASS for c in check_slurm(config(), host))
    Path(host.slurm_conf).write_text("PrologFlags=Alloc\n")
    flags = {c.name: c for c in check_slurm(config(), host)}["slurm.conf PrologFlags"]
    assert flags.status == FAIL and "DeferBatch" in flags.fix


def test_slurm_conf_flag_wins_over_env(tmp_path, monkeypatch):
    """--slurm-conf (HostPaths.slurm_conf) is read even when $SLURM_CONF names another file."""
    chosen, other = tmp_path / "chosen.conf", tmp_path / "other.conf"
    chosen.write_text("Prolog=/usr/libexec/slurm-vc/slurm-vc-prolog\n")
    other.write_text("Prolog=/bin/true\n")
    monkeypatch.setenv("SLURM_CONF", str(other))
    host = make_host(tmp_path)
    prolog = {c.name: c for c in check_slurm(config(), replace(host, slurm_conf=str(chosen)))}[
        "slurm.conf Prolog"
    ]
    assert prolog.status == PASS
    from_env = {c.name: c for c in check_slurm(config(), replace(host, slurm_conf=None))}["slurm.conf Prolog"]
    assert from_env.status == FAIL and "/bin/true" in from_env.detail


def test_run_checks_never_raises_and_formats(tmp_path):
    checks = run_checks(config(libvirt_uri="test:///default"), make_host(tmp_path))
    table = format_table(checks)
    assert "checks," in table.splitlines()[-1]
    assert any(c.name == "libvirtd" for c in checks)


def test_state_dir_must_be_traversable():
    import shutil
    import tempfile

    from slurm_vc.doctor import check_state_dir

    # not tmp_path: pytest's base directory is 0700, which is exactly what the check refuses
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vc-doctor-"))
    try:
        base.chmod(0o755)
        ok = check_state_dir(config_from_mapping({"state_dir": str(base / "new" / "state")}), HostPaths())
        assert ok.status == PASS and "created at first use" in ok.detail
        locked = base / "locked"
        (locked / "state").mkdir(parents=True)
        locked.chmod(0o700)
        bad = check_state_dir(config_from_mapping({"state_dir": str(locked / "state")}), HostPaths())
        assert bad.status == FAIL and str(locked) in bad.detail and "chmod o+x" in bad.fix
        # An existing jobs/ that QEMU cannot cross (the prolog does not chmod one it finds)
        (base / "made" / "state" / "jobs").mkdir(parents=True)
        (base / "made" / "state" / "jobs").chmod(0o700)
        jobs = check_state_dir(config_from_mapping({"state_dir": str(base / "made" / "state")}), HostPaths())
        assert jobs.status == FAIL and jobs.detail.startswith(f"{base}/made/state/jobs not searchable by")
    finally:
        shutil.rmtree(base)


def test_runtime_dir_on_tmpfs_and_old_ledgers(tmp_path):
    paths = make_host(tmp_path)
    mounts = Path(paths.proc, "mounts")
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n")
    state = tmp_path / "state"
    config = config_from_mapping({"state_dir": str(state), "runtime_dir": "/run/slurm-vc"})
    assert [(c.status, c.detail) for c in check_runtime_dir(config, paths)] == [
        (PASS, "/run/slurm-vc on tmpfs (/run)")
    ]
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /run/user/0 tmpfs rw 0 0\n")
    (state / "hugepages").mkdir(parents=True)
    (state / "hugepages" / "41.json").write_text("{}")
    (state / "hugepages" / ".lock").write_text("")
    disk, old = check_runtime_dir(config, paths)
    assert disk.status == WARN and "on ext4 (/), not a tmpfs" in disk.detail
    assert old.status == WARN and "1 in " in old.detail and "41.json" in old.detail
    assert "/run/slurm-vc/hugepages/<job>.<state>.json" in old.fix


def kvm_host(tmp_path: Path, mode: int, user: str) -> HostPaths:
    host = make_host(tmp_path)
    Path(host.dev_kvm).chmod(mode)
    # A commented default and a setting: the last uncommented one counts.
    Path(host.qemu_conf).write_text(f'#user = "root"\nuser = "{user}"\ngroup = "kvm"\n')
    return host


@pytest.fixture
def libvirt_unreachable(monkeypatch):
    """As on a host whose libvirtd is down: doctor falls back to qemu.conf's user."""
    monkeypatch.setattr(doctor, "_libvirt_qemu_user", lambda _uri, _domain_type: None)


@pytest.fixture
def libvirt_answers(monkeypatch):
    """Make libvirt report ``user`` as QEMU's user; returns the list of (uri, domain_type) asked."""
    asked: list[tuple[str, str]] = []

    def answer(user):
        def ask(uri, domain_type):
            asked.append((uri, domain_type))
            return user_named(user)

        monkeypatch.setattr(doctor, "_libvirt_qemu_user", ask)
        return asked

    return answer


def test_kvm_access_follows_the_qemu_user_of_qemu_conf(tmp_path, libvirt_unreachable):
    # "nobody" is neither the owner of the fake device (the test's user) nor in its group.
    closed = kvm_host(tmp_path / "a", 0o660, "nobody")
    [tcg] = check_kvm_access(config(domain_type="qemu"), closed)
    assert tcg.status == WARN and "nobody" in tcg.detail and "re-probes" in tcg.detail
    assert "mode 0660" in tcg.detail and "chgrp kvm" in tcg.fix
    [kvm] = check_kvm_access(config(domain_type="kvm", cpu_mode="host-passthrough"), closed)
    assert kvm.status == FAIL and "cannot start" in kvm.detail
    [open_to_all] = check_kvm_access(config(), kvm_host(tmp_path / "b", 0o666, "nobody"))
    assert open_to_all.status == PASS
    [as_root] = check_kvm_access(config(), kvm_host(tmp_path / "c", 0o600, "root"))
    assert as_root.status == PASS


def test_kvm_access_reports_an_unknown_qemu_user_and_skips_a_missing_device(tmp_path, libvirt_unreachable):
    [unknown] = check_kvm_access(config(), kvm_host(tmp_path / "a", 0o660, "no-such-user-xyz"))
    assert unknown.status == WARN and "no-such-user-xyz" in unknown.detail
    assert check_kvm_access(config(), make_host(tmp_path / "b", kvm=False)) == []


def test_kvm_access_takes_libvirts_answer_over_qemu_conf(tmp_path, libvirt_answers):
    """qemu.conf says root (who may open the 0600 device), libvirt says nobody (who may not): the
    check judges nobody, as QEMU will run, and names the user libvirt reported."""
    asked = libvirt_answers("nobody")
    [check] = check_kvm_access(
        config(domain_type="kvm", cpu_mode="host-passthrough"), kvm_host(tmp_path, 0o600, "root")
    )
    assert check.status == FAIL and "QEMU user nobody (uid " in check.detail, check.detail
    assert asked == [("qemu:///system", "kvm")]


def test_run_checks_asks_libvirt_for_qemus_user_once_per_run(tmp_path, monkeypatch):
    """Three checks need QEMU's user (/dev/kvm, images, state_dir); one libvirt connection serves
    them all, and the next run asks again (the answer may have changed)."""
    import libvirt

    opened: list[str] = []
    real_open = libvirt.open

    def counting_open(uri):
        opened.append(uri)
        return real_open(uri)

    monkeypatch.setattr(libvirt, "open", counting_open)
    cfg = config_from_mapping(
        {
            "host": {"libvirt_uri": "test:///default"},
            "state_dir": str(tmp_path / "state"),
            "images": {"d": {"disk": str(tmp_path / "d.qcow2")}},
        }
    )
    host = make_host(tmp_path / "host")
    run_checks(cfg, host)
    first = opened.count("test:///default")
    run_checks(cfg, host)
    assert opened.count("test:///default") == 2 * first
    # check_libvirt opens its own connection; QEMU's user costs exactly one more
    [libvirt_check] = [c for c in run_checks(cfg, host) if c.name == "libvirtd"]
    assert first == 2, (first, libvirt_check)


def test_job_key_secret(tmp_path):
    from slurm_vc.doctor import check_job_key

    secret = tmp_path / "secret"
    cfg = config_from_mapping({"job_key_secret": str(secret)})
    missing = check_job_key(cfg, HostPaths())
    assert missing.status == FAIL and str(secret) in missing.detail and "urandom" in missing.fix
    secret.write_bytes(b"short")
    assert check_job_key(cfg, HostPaths()).status == FAIL
    secret.write_bytes(b"s" * 32)
    assert check_job_key(cfg, HostPaths()).status == PASS


def test_tools_found_as_the_prolog_finds_them(tmp_path, monkeypatch):
    """Found through the prolog's search path, not the admin's PATH; the rules tried with nft -c."""
    import shutil

    from slurm_vc import doctor, netdev
    from slurm_vc.errors import NetworkError

    searched = []

    def which(name, path=None):
        searched.append((name, path))
        return f"/usr/bin/{name}" if name in present else None

    monkeypatch.setattr(shutil, "which", which)
    tried = []
    monkeypatch.setattr(netdev, "validate_ruleset", lambda script, netns=None: tried.append(script))
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SLURMD_NODENAME", "cn01")
    present = {"qemu-img", "nft"}
    checks = doctor.check_tools(config(), HostPaths())
    assert [(c.name, c.status) for c in checks] == [("qemu-img", PASS), ("nftables", PASS)]
    assert searched == [("qemu-img", os.defpath), ("nft", netdev.TOOL_PATH)]
    assert len(tried) == 1 and "vct1i0" in tried[0]  # the node's guest tap of a sample job
    present = set()
    checks = doctor.check_tools(config(), HostPaths())
    assert [(c.name, c.status) for c in checks] == [("qemu-img", FAIL), ("nftables", FAIL)]
    assert "isolation = 'none'" in checks[1].fix
    present = {"qemu-img", "nft"}

    def refuse(script, netns=None):
        raise NetworkError("nft: Error: Could not process rule: No such file or directory")

    monkeypatch.setattr(netdev, "validate_ruleset", refuse)
    [_, rules] = doctor.check_tools(config(), HostPaths())
    assert rules.status == FAIL and "No such file" in rules.detail and "cn01" in rules.detail
    # A hostname_format that this node's name breaks fails here, not in the first prolog.
    monkeypatch.setenv("SLURMD_NODENAME", "cn_01")
    bad_format = config_from_mapping({"network": {"hostname_format": "{node}"}})
    [_, rules] = doctor.check_tools(bad_format, HostPaths())
    assert rules.status == FAIL and "hostname_format" in rules.detail
    off = config_from_mapping({"network": {"isolation": "none"}})
    assert [c.status for c in doctor.check_tools(off, HostPaths())] == [PASS, PASS]


def test_hugepage_pools_must_exist_per_node_and_be_writable(tmp_path, monkeypatch):
    from slurm_vc import doctor

    host = make_host(tmp_path / "a")
    real_access = os.access
    monkeypatch.setattr(
        doctor.os,
        "access",
        lambda path, mode: False if str(path).endswith("nr_hugepages") else real_access(path, mode),
    )
    checks = check_hugepages(config(), host)
    assert checks[1].status == FAIL and "not writable" in checks[1].detail
    monkeypatch.undo()
    bare = make_host(tmp_path / "b")
    import shutil

    shutil.rmtree(Path(bare.sys, "devices/system/node"))
    checks = check_hugepages(config(), bare)
    assert [(c.name, c.status) for c in checks] == [("hugetlbfs 2M", PASS), ("hugepage pools", FAIL)]


def test_prolog_epilog_timeout(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)
    host = make_host(tmp_path)

    def verdict(value):
        Path(host.slurm_conf).write_text(f"PrologEpilogTimeout={value}\n" if value else "")
        found = [c for c in check_slurm(config(), host) if c.name == "slurm.conf PrologEpilogTimeout"]
        return found[0].status if found else None

    assert verdict(100) == FAIL  # not even timeouts.ready (120 s)
    assert verdict(130) == WARN  # under ready + lock (150 s)
    assert verdict(300) == PASS
    assert verdict(None) is None  # unset: Slurm does not time prologs out


def test_topology_reads_as_the_prolog_reads_it(tmp_path):
    from slurm_vc.doctor import check_topology

    cray = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs" / "cray-xc30"
    good = check_topology(config(), replace(make_host(tmp_path / "a"), sys=str(cray)))
    assert good.status == PASS and good.detail == "2 socket(s), 2 NUMA node(s), 24 cores, 24 CPUs"
    broken = check_topology(config(), make_host(tmp_path / "b"))  # a tree without devices/system/cpu
    assert broken.status == FAIL and "not a sysfs tree" in broken.detail


def test_configless_node_reads_slurmds_copy(tmp_path, monkeypatch):
    """No slurm.conf of its own: slurmd's configless copies (/run/slurm/conf) are what is in force."""
    monkeypatch.delenv("SLURM_CONF", raising=False)
    host = make_host(tmp_path)
    cache = Path(host.slurm_configless)
    cache.mkdir()
    (cache / "slurm.conf").write_text(
        "Prolog=/usr/libexec/slurm-vc/slurm-vc-prolog\nEpilog=/usr/libexec/slurm-vc/slurm-vc-epilog\n"
        "TaskProlog=/usr/libexec/slurm-vc/slurm-vc-task-prolog\nPrologFlags=Alloc,DeferBatch\n"
        "PlugStackConfig=/etc/slurm/plugstack.conf\n"  # the controller's path, absent here
    )
    (cache / "plugstack.conf").write_text("required /usr/lib/slurm/slurm_vc.so\n")
    checks = {c.name: c for c in check_slurm(config(), host)}
    assert all(c.status == PASS for c in checks.values()), checks
    assert checks["slurm.conf"].detail.endswith(f"configless copy {cache / 'slurm.conf'}")
    assert checks["plugstack entry"].detail == str(cache / "plugstack.conf")
    (cache / "slurm.conf").unlink()
    [missing] = check_slurm(config(), host)
    assert missing.status == FAIL and "nor a configless copy" in missing.detail


def test_state_dir_needs_direct_io(tmp_path, monkeypatch):
    """The overlays are opened with O_DIRECT (cache='none'): a file system that refuses it fails."""
    import errno

    from slurm_vc import doctor

    monkeypatch.setattr(doctor, "_supports_direct_io", lambda directory: True)
    state = Path("/var/tmp")  # a directory every user can search, unlike pytest's base
    cfg = config_from_mapping({"state_dir": str(state / "vc-doctor-direct-io" / "state")})
    assert doctor.check_state_dir(cfg, HostPaths()).status == PASS
    monkeypatch.undo()
    assert doctor._supports_direct_io(tmp_path)  # ext4 or tmpfs here (tmpfs has it since 6.6)
    assert not list(tmp_path.iterdir())  # the probe is gone
    real_open = os.open

    def refuse(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(doctor.os, "open", refuse)
    bad = doctor.check_state_dir(cfg, HostPaths())
    assert bad.status == FAIL and "O_DIRECT" in bad.detail and "ext4" in bad.fix
    assert not list(Path("/var/tmp").glob(".slurm-vc-doctor-*"))


def test_slurm_lines_in_included_files(tmp_path, monkeypatch):
    """Sites keep the hooks in an included file (Include prolog.conf, or a glob): read as slurmd does."""
    monkeypatch.delenv("SLURM_CONF", raising=False)
    host = make_host(tmp_path)
    (tmp_path / "plugstack.conf").write_text("required /usr/lib/slurm/slurm_vc.so\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-hooks.conf").write_text(
        "Prolog=/usr/libexec/slurm-vc/slurm-vc-prolog\nEpilog=/usr/libexec/slurm-vc/slurm-vc-epilog\n"
    )
    (tmp_path / "conf.d" / "20-task.conf").write_text(
        "TaskProlog=/usr/libexec/slurm-vc/slurm-vc-task-prolog\n"
    )
    (tmp_path / "flags.conf").write_text("PrologFlags=Alloc,DeferBatch  # deferred\n")
    Path(host.slurm_conf).write_text(
        f"ClusterName=x\ninclude conf.d/*.conf\nInclude {tmp_path / 'flags.conf'}\n"
    )
    checks = check_slurm(config(), host)
    assert [(c.name, c.status) for c in checks if c.status != PASS] == []
    assert len(checks) == 5


def _hook_host(tmp_path: Path, interpreter: str) -> HostPaths:
    """A slurm.conf whose Prolog and Epilog are installed hook scripts running ``interpreter``."""
    hooks = tmp_path / "libexec"
    hooks.mkdir(parents=True)
    for name in ("slurm-vc-prolog", "slurm-vc-epilog"):
        text = (Path(__file__).parents[2] / "prolog" / "slurm-vc-prolog").read_text()
        (hooks / name).write_text(text.replace("@PYTHON@", interpreter))
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"Prolog={hooks}/slurm-vc-prolog\nEpilog={hooks}/slurm-vc-epilog\n")
    return HostPaths(slurm_conf=str(conf))


def test_hook_python_is_asked_directly(tmp_path):
    """The interpreter written into the installed hooks is run and must import every package."""
    import sys

    from slurm_vc.doctor import check_hook_python

    [good] = check_hook_python(config(), _hook_host(tmp_path / "venv", sys.executable))
    assert good.status == PASS and "slurm_vc 0.1.0 and 7 packages import" in good.detail, good.detail
    # An interpreter with an old pydantic and no libvirt: what Debian 12's packages alone give.
    fake = tmp_path / "python-without"
    fake.write_text(
        '#!/bin/sh\necho \'{"missing": ["libvirt (ModuleNotFoundError)",'
        ' "pydantic (1.10.4 installed, 2 needed)"], "slurm_vc": "0.1.0"}\'\n'
    )
    fake.chmod(0o755)
    [bad] = check_hook_python(config(), _hook_host(tmp_path / "deb", str(fake)))
    assert (
        bad.status == FAIL and "cannot import libvirt (ModuleNotFoundError), pydantic (1.10.4" in bad.detail
    )
    assert "python3-libvirt" in bad.fix and "pydantic 2" in bad.fix
    [gone] = check_hook_python(config(), _hook_host(tmp_path / "gone", "/nonexistent/python3"))
    assert gone.status == FAIL and "does not run" in gone.detail
    # A source tree's hooks (@PYTHON@ kept) use the project's venv: nothing to ask.
    assert check_hook_python(config(), _hook_host(tmp_path / "src", "@PYTHON@")) == []


def test_hook_python_probe_reports_a_missing_module_for_real(tmp_path):
    """The probe itself, run by a real interpreter that lacks a module (isolated, no site-packages)."""
    import json
    import subprocess
    import sys

    from slurm_vc.doctor import _IMPORT_PROBE

    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMPORT_PROBE, "json", "no_such_module_xyz"],
        capture_output=True,
        text=True,
        check=True,
    )
    probe = json.loads(result.stdout)
    assert probe["missing"] == ["no_such_module_xyz (ModuleNotFoundError)"] and probe["slurm_vc"] is None


def test_libvirt_log_dir(tmp_path):
    from slurm_vc.doctor import WARN, check_libvirt_log_dir

    assert (
        check_libvirt_log_dir(
            config_from_mapping({"host": {"libvirt_log_dir": str(tmp_path)}}), HostPaths()
        ).status
        == PASS
    )
    missing = check_libvirt_log_dir(
        config_from_mapping({"host": {"libvirt_log_dir": str(tmp_path / "none")}}), HostPaths()
    )
    assert missing.status == WARN and "OOM killer" in missing.detail and "host.libvirt_log_dir" in missing.fix
