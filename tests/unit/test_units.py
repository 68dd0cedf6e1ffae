import pytest

from slurm_vc.errors import UsageError
from slurm_vc.units import GIB, MIB, format_cpulist, format_size, parse_cpulist, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4G", 4 * GIB),
        ("512M", 512 * MIB),
        ("2048", 2048 * MIB),
        ("1T", 1024 * GIB),
        ("2MiB", 2 * MIB),
        ("64k", 64 * 1024),
        ("8GB", 8 * GIB),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "-1G", "0", "0G", "", "G", "1.5G", "4 G G", "99999999999999999G"])
def test_parse_size_rejects_with_message(text):
    with pytest.raises(UsageError) as info:
        parse_size(text, what="memory")
    assert "memory" in str(info.value)


def test_format_size_round_trip():
    for size in (2 * MIB, GIB, 3 * GIB, 1536 * 1024):
        assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("5", [5]),
        ("", []),
        (" 1 , 3-4 ", [1, 3, 4]),
        ("3,1,1", [1, 3]),
    ],
)
def test_parse_cpulist(text, expected):
    assert parse_cpulist(text) == expected


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "1,,2", "-1", "1-2-3", "99999999"])
def test_parse_cpulist_rejects(text):
    with pytest.raises(UsageError):
        parse_cpulist(text)


def test_format_cpulist():
    assert format_cpulist([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpulist([]) == ""
    assert parse_cpulist(format_cpulist([7, 2, 3, 4])) == [2, 3, 4, 7]
