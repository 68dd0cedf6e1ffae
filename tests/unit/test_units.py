import pytest

from slurm_vc.errors import UsageError
from slurm_vc.units import (
    GIB,
    MAX_CPU_ID,
    MIB,
    SIZE_HELP,
    format_cpulist,
    format_size,
    parse_cpulist,
    parse_size,
)


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
        ("4GiB", 4 * GIB),
        ("4kB", 4 * 1024),
        ("4kb", 4 * 1024),  # case does not matter, as before
        ("4Gb", 4 * GIB),
        ("4gib", 4 * GIB),
        ("4GIB", 4 * GIB),
        ("1TiB", 1024 * GIB),
        (" 4G\n", 4 * GIB),  # surrounding blanks are stripped (sysfs and TOML values carry them)
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "-1G", "0", "0G", "", "G", "1.5G", "4 G G", "99999999999999999G"])
def test_parse_size_rejects_with_message(text):
    with pytest.raises(UsageError) as info:
        parse_size(text, what="memory")
    assert "memory" in str(info.value)


@pytest.mark.parametrize("text", ["4B", "4iB", "4b", "4IB", "4Bi", "4GiBB", "4G iB", "４G", "٤"])
def test_parse_size_wants_a_unit_letter_before_b_or_ib(text):
    """'4B' and '4iB' used to be 4 MiB; full-width and Arabic-Indic digits are no digits."""
    with pytest.raises(UsageError) as info:
        parse_size(text, what="memory")
    assert str(info.value) == f"invalid memory {text!r}: expected {SIZE_HELP}"


def test_parse_size_message_of_a_huge_value_is_short():
    with pytest.raises(UsageError) as info:
        parse_size("9" * 5000 + "G", what="--mem")
    message = str(info.value)
    assert message.startswith("invalid --mem '999") and "(5001 characters)" in message
    assert len(message) < 250


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


@pytest.mark.parametrize("text", ["٠", "０-１", "0,٣", "1\u2003,2", "0,\n1", "0-1\n,2", "²"])
def test_parse_cpulist_takes_ascii_digits_and_blanks_only(text):
    """\\d and \\s took any Unicode digit or space: '٠' was CPU 0, '０-１' CPUs 0-1."""
    with pytest.raises(UsageError, match="expected comma-separated ids"):
        parse_cpulist(text, what="--cpus")


@pytest.mark.parametrize(
    "text", ["1" * 5000, "0," + "1" * 5000, "0-" + "9" * 5000, "9" * 5000 + "-1", "000000000000065536"]
)
def test_parse_cpulist_huge_ids_get_the_max_cpu_id_message(text):
    """A 5000-digit id raised int()'s 4300-digit ValueError (an internal error)."""
    with pytest.raises(UsageError) as info:
        parse_cpulist(text, what="--cpus")
    message = str(info.value)
    assert message.startswith("invalid --cpus ") and f"is larger than {MAX_CPU_ID - 1}" in message
    assert len(message) < 250 and "\n" not in message


def test_parse_cpulist_leading_zeros_and_trailing_newline():
    assert parse_cpulist("0000000000000000000001-3\n") == [1, 2, 3]
    assert parse_cpulist(f"{MAX_CPU_ID - 1}") == [MAX_CPU_ID - 1]


def test_format_cpulist():
    assert format_cpulist([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpulist([]) == ""
    assert parse_cpulist(format_cpulist([7, 2, 3, 4])) == [2, 3, 4, 7]
