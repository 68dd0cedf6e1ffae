"""Guest seed renderers and the NoCloud ISO (slurm_vc/seed.py)."""

from __future__ import annotations

import io
import os

import pycdlib
import pytest
import yaml

from slurm_vc import seed
from slurm_vc.errors import ConfigError, HostError, ImageError
from slurm_vc.seed import SeedSpec

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJGBKnKubujL8ciTxgVmz6FBVh18yOmRlFSIw3O8Gj2 job-42@slurm-vc"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 other"


def make_spec(**overrides) -> SeedSpec:
    values = dict(
        hostname="vc42-0",
        instance_id="slurm-vc-42-0",
        ip="10.233.5.10",
        prefixlen=24,
        # All digits: YAML 1.1 would read an unquoted 52:54:00:12:34:56 as a base-60 integer.
        mac="52:54:00:12:34:56",
        mtu=9000,
        hosts=[("10.233.5.10", "vc42-0 vc42-0.vc"), ("10.233.5.11", "vc42-1"), ("10.233.5.12", "vc42-2")],
        arp=[
            ("10.233.5.10", "52:54:00:12:34:56"),
            ("10.233.5.11", "52:54:00:12:34:57"),
            ("10.233.5.12", "52:54:00:AB:CD:EF"),
        ],
        ssh_authorized_keys=[KEY_A + "\n"],
    )
    values.update(overrides)
    return SeedSpec(**values)


def parse_env(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


# --- SeedSpec validation --------------------------------------------------------------------


def test_spec_normalises_macs_keys_and_hosts():
    spec = make_spec()
    assert spec.arp[2] == ("10.233.5.12", "52:54:00:ab:cd:ef")
    assert spec.ssh_authorized_keys == (KEY_A,)
    assert isinstance(spec.hosts, tuple)
    assert spec.peer_arp == (("10.233.5.11", "52:54:00:12:34:57"), ("10.233.5.12", "52:54:00:ab:cd:ef"))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"hostname": "bad_name"}, "hostname"),
        ({"hostname": "vc.example"}, "short name"),
        ({"instance_id": "has space"}, "instance_id"),
        ({"ip": "10.233.5.300"}, "IPv4"),
        ({"prefixlen": 33}, "prefixlen"),
        ({"prefixlen": True}, "prefixlen"),
        ({"mac": "52:54:00:12:34"}, "MAC"),
        ({"mtu": 20}, "mtu"),
        ({"gateway": "nowhere"}, "gateway"),
        ({"hosts": [("10.233.5.11", "")]}, "no host name"),
        ({"hosts": [("10.233.5.11", "ok bad!name")]}, "hosts entry name"),
        ({"arp": [("10.233.5.11", "zz:54:00:12:34:57")]}, "arp entry"),
        ({"ssh_authorized_keys": ["not a key"]}, "ssh key"),
        ({"ssh_authorized_keys": [KEY_A + "\nssh-ed25519 AAAA injected"]}, "ssh key"),
        ({"login_user": "Root Admin"}, "login_user"),
    ],
)
def test_spec_rejects_bad_values(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_spec(**overrides)


# --- cloud-init files -----------------------------------------------------------------------


def test_meta_data():
    data = yaml.safe_load(seed.render_meta_data(make_spec()))
    assert data == {"instance-id": "slurm-vc-42-0", "local-hostname": "vc42-0"}


def test_network_config_is_version_1_static_matched_by_mac():
    data = yaml.safe_load(seed.render_network_config(make_spec(gateway="10.233.5.1")))
    assert data["version"] == 1
    (iface,) = data["config"]
    assert iface["type"] == "physical"
    assert iface["name"] == "eth0"
    assert iface["mac_address"] == "52:54:00:12:34:56"  # a string, not a base-60 number
    assert iface["mtu"] == 9000
    assert iface["subnets"] == [{"type": "static", "address": "10.233.5.10/24", "gateway": "10.233.5.1"}]


def test_network_config_without_gateway_has_no_gateway_key():
    data = yaml.safe_load(seed.render_network_config(make_spec()))
    assert "gateway" not in data["config"][0]["subnets"][0]


def test_user_data_header_and_hostname():
    text = seed.render_user_data(make_spec())
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["hostname"] == "vc42-0"
    assert data["preserve_hostname"] is False
    assert data["manage_etc_hosts"] is False


def test_user_data_writes_etc_hosts_with_own_name_on_cluster_address():
    data = yaml.safe_load(seed.render_user_data(make_spec()))
    (entry,) = [f for f in data["write_files"] if f["path"] == "/etc/hosts"]
    assert entry["content"] == seed.render_etc_hosts(make_spec())
    table = {}
    for line in entry["content"].splitlines():
        if line and not line.startswith("#"):
            address, *names = line.split()
            for name in names:
                table.setdefault(name, []).append(address)
    assert table["vc42-0"] == ["10.233.5.10"]  # never 127.0.1.1: MPI would advertise loopback
    assert table["vc42-0.vc"] == ["10.233.5.10"]
    assert table["vc42-1"] == ["10.233.5.11"]
    assert table["vc42-2"] == ["10.233.5.12"]
    assert table["localhost"] == ["127.0.0.1", "::1"]
    assert "127.0.1.1" not in entry["content"]


def test_user_data_sets_permanent_arp_for_every_peer_in_bootcmd():
    data = yaml.safe_load(seed.render_user_data(make_spec()))
    bootcmd = data["bootcmd"]
    assert all(isinstance(line, str) for line in bootcmd)
    joined = "\n".join(bootcmd)
    assert "ip neigh replace 10.233.5.11 lladdr 52:54:00:12:34:57 dev eth0 nud permanent" in joined
    assert "arp -i eth0 -s 10.233.5.12 52:54:00:ab:cd:ef" in joined
    assert "10.233.5.10 lladdr" not in joined  # not for its own address
    # bootcmd runs on every boot; runcmd would lose the entries at the first reboot.
    assert "runcmd" not in data
    # the entries are set once eth0 carries its address (bringing a link up flushes neighbours)
    assert "inet 10.233.5.10/" in bootcmd[0]


def test_user_data_without_peers_has_no_bootcmd():
    data = yaml.safe_load(seed.render_user_data(make_spec(arp=[("10.233.5.10", "52:54:00:12:34:56")])))
    assert "bootcmd" not in data


def test_user_data_root_login_gets_the_key_without_default_user():
    data = yaml.safe_load(seed.render_user_data(make_spec(ssh_authorized_keys=[KEY_A, KEY_B])))
    assert data["disable_root"] is False
    assert data["users"] == [{"name": "root", "lock_passwd": True, "ssh_authorized_keys": [KEY_A, KEY_B]}]
    assert data["ssh_pwauth"] is False


def test_user_data_other_login_user():
    data = yaml.safe_load(seed.render_user_data(make_spec(login_user="centos")))
    assert data["disable_root"] is True
    (user,) = data["users"]
    assert user["name"] == "centos"
    assert user["ssh_authorized_keys"] == [KEY_A]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"


def test_etc_hosts_render():
    text = seed.render_etc_hosts(make_spec(hosts=[("10.233.5.10", "vc42-0")]))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", "10.233.5.10 vc42-0"]


# --- the tiny guest's formats ---------------------------------------------------------------


def test_env_file():
    pairs = parse_env(seed.render_env(make_spec(gateway="10.233.5.1")))
    single = {k: v for k, v in pairs if k not in ("host", "arp", "ssh_key")}
    assert single == {
        "version": "1",
        "instance_id": "slurm-vc-42-0",
        "hostname": "vc42-0",
        "ip": "10.233.5.10",
        "prefixlen": "24",
        "mac": "52:54:00:12:34:56",
        "mtu": "9000",
        "gateway": "10.233.5.1",
        "login_user": "root",
    }
    assert [v for k, v in pairs if k == "host"] == [
        "10.233.5.10 vc42-0 vc42-0.vc",
        "10.233.5.11 vc42-1",
        "10.233.5.12 vc42-2",
    ]
    assert [v for k, v in pairs if k == "arp"] == [
        "10.233.5.11 52:54:00:12:34:57",
        "10.233.5.12 52:54:00:ab:cd:ef",
    ]
    assert [v for k, v in pairs if k == "ssh_key"] == [KEY_A]  # the value keeps its '=' and spaces


def test_kernel_cmdline():
    cmdline = seed.kernel_cmdline(make_spec(ssh_authorized_keys=[KEY_A, KEY_B]), base=" console=ttyS0 ")
    params = cmdline.split()
    assert params[0] == "console=ttyS0"
    values = dict(p.split("=", 1) for p in params[1:])
    assert values["vc.hostname"] == "vc42-0"
    assert values["vc.ip"] == "10.233.5.10/24"
    assert values["vc.mac"] == "52:54:00:12:34:56"
    assert values["vc.mtu"] == "9000"
    assert values["vc.user"] == "root"
    assert "vc.gw" not in values
    assert values["vc.hosts"] == "10.233.5.10:vc42-0:vc42-0.vc,10.233.5.11:vc42-1,10.233.5.12:vc42-2"
    assert values["vc.arp"] == "10.233.5.11@52:54:00:12:34:57,10.233.5.12@52:54:00:ab:cd:ef"
    key_a_type, key_a_blob = KEY_A.split()[:2]
    assert values["vc.keys"].split(",") == [
        f"{key_a_type}:{key_a_blob}",
        "ssh-rsa:AAAAB3NzaC1yc2EAAAADAQABAAABAQC7",
    ]


def test_kernel_cmdline_too_long_for_the_kernel():
    hosts = [(f"10.233.{i // 200}.{i % 200 + 1}", f"vc42-{i}") for i in range(200)]
    with pytest.raises(ImageError, match="kernel command line"):
        seed.kernel_cmdline(make_spec(hosts=hosts))


# --- the ISO --------------------------------------------------------------------------------


def read_iso(path: str) -> tuple[str, dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for name in ("meta-data", "user-data", "network-config", "slurm-vc.env"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue().decode()
        joliet = sorted(
            child.file_identifier().decode("utf-16_be") for child in iso.list_children(joliet_path="/")
        )
    finally:
        iso.close()
    assert [n for n in joliet if n not in (".", "..", "\x00", "\x01")] == sorted(files)
    return label, files


def test_write_seed_iso_and_read_back(tmp_path):
    spec = make_spec()
    path = tmp_path / "seed.iso"
    assert seed.write_seed_iso(spec, str(path)) == str(path)
    label, files = read_iso(str(path))
    assert label == "cidata"  # lower case: old cloud-init matches the label case-sensitively
    assert files == seed.seed_files(spec)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temporary left


def test_write_seed_iso_replaces_an_old_seed(tmp_path):
    path = tmp_path / "seed.iso"
    seed.write_seed_iso(make_spec(), str(path))
    seed.write_seed_iso(make_spec(hostname="vc42-9"), str(path))
    _, files = read_iso(str(path))
    assert "hostname=vc42-9" in files["slurm-vc.env"]


def test_write_seed_iso_into_missing_directory_is_a_host_error(tmp_path):
    with pytest.raises(HostError, match="cannot write the guest seed"):
        seed.write_seed_iso(make_spec(), str(tmp_path / "missing" / "seed.iso"))


def test_remove_seed_is_idempotent(tmp_path):
    path = tmp_path / "seed.iso"
    seed.write_seed_iso(make_spec(), str(path))
    seed.remove_seed(str(path))
    assert not path.exists()
    seed.remove_seed(str(path))  # second time: nothing to do, no error
