import subprocess
import sys

import pytest

from slurm_vc.cli import main
from slurm_vc.configfile import Catalog, catalog_from_mapping
from slurm_vc.errors import EXIT_CONFIG, EXIT_USAGE, RequestError
from slurm_vc.request import MAX_REQUEST_LENGTH, parse_request
from slurm_vc.units import GIB, MIB, SIZE_HELP, TIB


def test_plain_image(site_config):
    request = parse_request("centos7-hpc", site_config)
    assert request.image == "centos7-hpc" and request.vcpus is None and request.memory is None


def test_options(site_config):
    request = parse_request("tiny,vcpus=4,mem=8G,pages=1G", site_config)
    assert (request.vcpus, request.memory, request.page_size) == (4, 8 * GIB, GIB)
    assert request.to_spec() == "tiny,vcpus=4,mem=8192M,pages=1G"
    assert parse_request(request.to_spec(), site_config) == request


@pytest.mark.parametrize(
    "value,needle",
    [
        ("", "needs a value"),
        ("nosuch", "available images: centos7-hpc, tiny"),
        ("tiny,vcpus=0", "1 to 4096"),
        ("tiny,vcpus=x", "1 to 4096"),
        ("tiny,mem=12XB", "mem"),
        ("tiny,mem=-1G", "invalid --vcluster mem '-1G'"),
        ("tiny,pages=4M", "2M, 1G or none"),
        ("tiny,colour=blue", "allowed: vcpus, mem, pages"),
        ("tiny,vcpus", "KEY=VALUE"),
        ("tiny,vcpus=2,vcpus=3", "twice"),
        ("tiny;rm -rf /", "only letters"),
        ("tiny $(id)", "only letters"),
        ("x" * (MAX_REQUEST_LENGTH + 1), "at most"),
    ],
)
def test_bad_requests(site_config, value, needle):
    with pytest.raises(RequestError) as info:
        parse_request(value, site_config)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "value,needle",
    [
        ("tiny,mem=4G\n", "contains '\\n': only letters"),  # "$" matched before a final newline
        ("tiny\n", "contains '\\n'"),
        (",", "',' does not start with an image name"),
        (",mem=4G", "does not start with an image name: expected IMAGE[,vcpus=N]"),
        ("tiny,mem=4B", f"invalid --vcluster mem '4B': expected {SIZE_HELP}"),
        ("tiny,mem=4iB", f"invalid --vcluster mem '4iB': expected {SIZE_HELP}"),
        ("tiny,mem=4kb", "mem='4kb': the guest's memory must be a whole number of MiB"),
        ("tiny,mem=4K", "mem='4K': the guest's memory must be a whole number of MiB"),
        ("tiny,mem=4k", "whole number of MiB"),
        ("tiny,mem=1025K", "1025K is not"),
    ],
)
def test_bad_requests_found_by_fuzzing(site_config, value, needle):
    with pytest.raises(RequestError) as info:
        parse_request(value, site_config)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_empty_image_lists_the_available_images(site_config):
    with pytest.raises(RequestError, match="available images: centos7-hpc, tiny"):
        parse_request(",vcpus=2", site_config)


@pytest.mark.parametrize(
    "mem,memory,spec",
    [
        ("1024K", MIB, "mem=1M"),
        ("4GiB", 4 * GIB, "mem=4096M"),
        ("4GB", 4 * GIB, "mem=4096M"),
        ("4g", 4 * GIB, "mem=4096M"),
        ("2048", 2048 * MIB, "mem=2048M"),
        ("000000000000001", MIB, "mem=1M"),
        ("999999999999999", 999999999999999 * MIB, "mem=999999999999999M"),
        ("999999999999999G", 999999999999999 * GIB, "mem=999999999999999G"),
        ("999999999999999T", 999999999999999 * TIB, "mem=999999999999999T"),
    ],
)
def test_canonical_form_parses_back_to_the_same_request(site_config, mem, memory, spec):
    request = parse_request(f"tiny,mem={mem},pages=none", site_config)
    assert request.memory == memory
    assert request.to_spec() == f"tiny,{spec},pages=none"
    assert parse_request(request.to_spec(), site_config) == request


def test_cli_validate_ok(config_file, capsys):
    assert main(["--config", str(config_file), "validate-request", "tiny,vcpus=2"]) == 0
    assert capsys.readouterr().out.strip() == "tiny,vcpus=2"


def test_cli_validate_rejects_one_line(config_file, capsys):
    assert main(["--config", str(config_file), "validate-request", "--quiet", "nosuch"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown image 'nosuch'" in err and "centos7-hpc, tiny" in err


@pytest.mark.parametrize(
    "value,needle",
    [
        ("centos7-hpc,mem=4G\n", "contains '\\n'"),
        ("centos7-hpc,mem=4kb", "whole number of MiB"),
        ("centos7-hpc,mem=4K", "whole number of MiB"),
        (",", "does not start with an image name"),
    ],
)
def test_cli_validate_rejects_fuzzed_values(config_file, capsys, value, needle):
    assert main(["--config", str(config_file), "validate-request", value]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and needle in err and len(err.strip().splitlines()) == 1


def test_cli_missing_config(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "x.toml"), "validate-request", "tiny"]) == EXIT_CONFIG
    assert "not found" in capsys.readouterr().err


def test_cli_validate_does_not_import_pydantic(config_file):
    """The submit-time check runs inside every sbatch: it reads the catalog without pydantic."""
    code = (
        "import sys; from slurm_vc.cli import main;"
        f" rc = main(['--config', {str(config_file)!r}, 'validate-request', '--quiet', 'tiny,vcpus=2']);"
        " sys.exit(10 + rc if 'pydantic' in sys.modules else rc)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "images,needle",
    [
        ("images = 3", "key 'images'"),
        ('[images."Bad Name"]\nkernel = "/k"', "image name 'Bad Name' is not allowed"),
        ('[images]\ntiny = "not a table"', "key 'images.tiny'"),
    ],
)
def test_cli_validate_malformed_catalog_gets_the_full_validation(tmp_path, capsys, images, needle):
    path = tmp_path / "vcluster.toml"
    path.write_text(images + "\n")
    assert main(["--config", str(path), "validate-request", "tiny"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_catalog_from_mapping():
    assert catalog_from_mapping({}, "f").images == frozenset()
    catalog = catalog_from_mapping({"images": {"a": {}, "b-1": {"kernel": "/k"}}, "x": 1}, "f")
    assert catalog == Catalog(images=frozenset({"a", "b-1"}), source="f")
    assert catalog_from_mapping({"images": []}, "f") is None
    assert catalog_from_mapping({"images": {"A": {}}}, "f") is None
    assert catalog_from_mapping({"images": {"a": "x"}}, "f") is None


def test_bad_toml_and_missing_file_are_config_errors(tmp_path, capsys):
    path = tmp_path / "vcluster.toml"
    path.write_text("images = [\n")
    assert main(["--config", str(path), "validate-request", "tiny"]) == EXIT_CONFIG
    assert "not valid TOML" in capsys.readouterr().err


def test_unknown_image_lists_at_most_twenty_images():
    catalog = Catalog(images=frozenset(f"img{i:03d}" for i in range(25)), source="site.toml")
    with pytest.raises(RequestError) as info:
        parse_request("nosuch", catalog)
    message = str(info.value)
    assert "img000, img001" in message and "img019, and 5 more" in message and "img020" not in message
