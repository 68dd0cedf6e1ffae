import os
from pathlib import Path

import pytest

from slurm_vc.config import config_from_mapping, load_config
from slurm_vc.errors import ConfigError
from slurm_vc.units import GIB, MIB

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid():
    config = load_config(str(REPO / "packaging" / "vcluster.toml.example"))
    assert "centos7-hpc" in config.images
    assert config.host.reserved_memory == GIB
    assert config.page_size == 2 * 1024 * 1024


def test_env_var_selects_file(config_file, monkeypatch):
    monkeypatch.setenv("SLURM_VC_CONFIG", str(config_file))
    assert load_config().host.domain_type == "qemu"


def test_explicit_path_wins_over_env(config_file, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_VC_CONFIG", str(tmp_path / "missing.toml"))
    assert load_config(str(config_file)).source == str(config_file)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_malformed_toml_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[host\nx=")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "TOML" in str(info.value)


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"host": {"bogus": 1}}, "unknown key 'host.bogus'"),
        ({"hots": {}}, "unknown key 'hots'"),
        ({"host": {"hugepage_size": "4M"}}, "host.hugepage_size"),
        ({"host": {"domain_type": "xen"}}, "host.domain_type"),
        ({"host": {"cpu_mode": "custom"}}, "cpu_model"),
        ({"host": {"domain_type": "qemu", "cpu_mode": "host-passthrough"}}, "needs domain_type = 'kvm'"),
        ({"host": {"reserved_memory": "12XB"}}, "host.reserved_memory"),
        ({"host": {"reserved_memory": "-1G"}}, "host.reserved_memory"),
        ({"host": {"reserved_memory": -1}}, "host.reserved_memory"),
        ({"host": {"reserved_memory": 1.5}}, "no unit means MiB"),
        ({"host": {"reserved_memory": True}}, "host.reserved_memory"),
        ({"images": {"x": {"disk": "/a", "default_memory": 0}}}, "greater than zero"),
        # TOML types are kept: no silent conversions
        ({"host": {"reserved_cores": True}}, "host.reserved_cores"),
        ({"host": {"reserved_cores": 1.0}}, "host.reserved_cores"),
        ({"host": {"reserved_cores": "2"}}, "host.reserved_cores"),
        ({"host": {"lock_memory": "yes"}}, "host.lock_memory"),
        ({"host": {"nosharepages": 0}}, "host.nosharepages"),
        ({"timeouts": {"ready": "120"}}, "timeouts.ready"),
        ({"timeouts": {"ready": float("nan")}}, "finite number"),
        ({"timeouts": {"lock": float("inf")}}, "finite number"),
        ({"images": {"x": {"disk": "/a", "default_vcpus": "4"}}}, "images.x.default_vcpus"),
        # control characters would end up in paths, XML and command lines
        ({"images": {"x": {"disk": "/x\u0001y"}}}, "control characters"),
        ({"images": {"x": {"kernel": "/k", "cmdline": "a\u0000b"}}}, "images.x.cmdline"),
        ({"host": {"emulator": "/usr/bin/q\u0007"}}, "host.emulator"),
        ({"state_dir": "/var/lib/vc\n"}, "state_dir"),
        # paths the daemons use must be absolute
        ({"state_dir": "relative/dir"}, "absolute path"),
        ({"state_dir": ""}, "absolute path"),
        ({"runtime_dir": "run"}, "runtime_dir"),
        ({"job_key_secret": "munge.key"}, "job_key_secret"),
        ({"host": {"emulator": "qemu-system-x86_64"}}, "host.emulator"),
        ({"network": {"subnet": "8.8.8.0/24"}}, "private"),
        ({"network": {"subnet": "10.0.0.0/28"}}, "/24 or larger"),
        ({"network": {"mac_prefix": "53:54:00"}}, "unicast"),
        ({"network": {"mtu": 70000}}, "network.mtu"),
        ({"images": {"BAD NAME": {"disk": "/a"}}}, "not allowed"),
        ({"images": {"x": {"disk": "relative.qcow2"}}}, "absolute path"),
        ({"images": {"x": {}}}, "needs 'disk'"),
        ({"images": {"x": {"disk": "/a", "surprise": 1}}}, "unknown key 'images.x.surprise'"),
    ],
)
def test_bad_config_names_key_and_allowed(data, needle):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, source="site.toml")
    assert "site.toml" in str(info.value)
    assert needle in str(info.value)


def test_tcg_default_cpu_mode_is_host_model():
    assert config_from_mapping({"host": {"domain_type": "qemu"}}).host.cpu_mode == "host-model"
    assert config_from_mapping({}).host.cpu_mode == "host-passthrough"


@pytest.mark.parametrize("value", [4096, "4096", "4G", "4096M", "4194304K"])
def test_memory_size_without_unit_is_mib(value):
    """A bare TOML number means MiB, like a string without a unit (and like Slurm's --mem)."""
    config = config_from_mapping(
        {"host": {"reserved_memory": value}, "images": {"x": {"disk": "/a", "default_memory": value}}}
    )
    assert config.host.reserved_memory == 4 * GIB
    assert config.images["x"].default_memory == 4 * GIB


@pytest.mark.parametrize("value", [0, "0"])
def test_reserved_memory_may_be_zero(value):
    assert config_from_mapping({"host": {"reserved_memory": value}}).host.reserved_memory == 0


def test_default_reserved_memory_is_one_gib():
    assert config_from_mapping({}).host.reserved_memory == 1024 * MIB


def test_toml_types_that_are_exact_still_load():
    config = config_from_mapping(
        {"timeouts": {"ready": 90, "lock": 2.5}, "host": {"reserved_cores": 2, "lock_memory": True}}
    )
    assert config.timeouts.ready == 90.0 and config.timeouts.lock == 2.5
    assert config.host.reserved_cores == 2 and config.host.lock_memory is True


def test_config_file_must_be_a_small_regular_file(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):  # and does not block
        load_config(str(fifo))
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (4 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="too large for a site config"):
        load_config(str(big))


def test_deeply_nested_toml_is_a_config_error(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(str(deep))


def test_empty_config_flag_is_an_error(monkeypatch, config_file):
    monkeypatch.setenv("SLURM_VC_CONFIG", str(config_file))
    with pytest.raises(ConfigError, match="--config: the path is empty"):
        load_config("")
