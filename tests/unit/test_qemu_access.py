"""qemu_access: the permission check the kernel makes when QEMU, as libvirt's user, opens a file.

The pure decisions are checked against hand-made cases, and then against the kernel itself: the
same files are opened by a process running as ``nobody`` (root only).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from slurm_vc.qemu_access import (
    ACL_XATTR,
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    READ,
    SEARCH,
    UNPRIVILEGED,
    USER,
    USER_OBJ,
    WRITE,
    QemuUser,
    acl_allows,
    allows,
    dac_label,
    permits,
    qemu_user,
)

QEMU = QemuUser("libvirt-qemu", 64055, frozenset({64055, 107}))


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_access value: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


CAPABILITIES = """<capabilities><host><uuid>x</uuid>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+64055</baselabel>
    <baselabel type='qemu'>+0:+107</baselabel>
  </secmodel></host></capabilities>"""


def test_dac_label_is_read_per_domain_type():
    assert dac_label(CAPABILITIES, "kvm") == (64055, 64055)
    assert dac_label(CAPABILITIES, "qemu") == (0, 107)
    assert dac_label(CAPABILITIES, "xen") is None
    assert dac_label("<capabilities><host/></capabilities>", "kvm") is None  # security_driver none
    assert dac_label("not xml", "kvm") is None


@pytest.mark.parametrize(
    "mode,owner,group,want,expected",
    [
        (0o644, 0, 0, READ, True),  # other r
        (0o640, 0, 0, READ, False),  # group r, but not QEMU's group
        (0o640, 0, 107, READ, True),  # root:kvm 0640: QEMU is in kvm
        (0o604, 0, 107, READ, False),  # the group class applies and denies, though "other" would allow
        (0o400, 64055, 0, READ, True),  # owned by QEMU's user
        (0o044, 64055, 0, READ, False),  # the owner class applies and denies
        (0o751, 0, 0, SEARCH, True),
        (0o750, 0, 64055, SEARCH, True),
        (0o750, 0, 0, SEARCH, False),
        (0o644, 0, 0, READ | WRITE, False),
    ],
)
def test_mode_bits_pick_one_class(mode, owner, group, want, expected):
    assert allows(mode, owner, group, QEMU, want) is expected


def test_root_gets_no_override_and_unprivileged_is_the_other_bits():
    """libvirt drops QEMU's capabilities even when it runs as root: only the owner bits count."""
    root = QemuUser("root", 0, frozenset({0}))
    assert allows(0o600, 0, 0, root, READ) and not allows(0o060, 0, 0, root, READ)
    assert not allows(0o644, 1000, 1000, root, WRITE)
    assert allows(0o004, 0, 0, UNPRIVILEGED, READ) and not allows(0o770, 0, 0, UNPRIVILEGED, READ)


def test_acl_named_user_group_mask_and_other():
    base = [(USER_OBJ, 6, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]
    named = acl(base[0], (USER, 4, 64055), base[1], (MASK, 4, 0), base[2])
    assert acl_allows(named, 0, 0, QEMU, READ) is True
    masked = acl(base[0], (USER, 6, 64055), base[1], (MASK, 0, 0), base[2])
    assert acl_allows(masked, 0, 0, QEMU, READ) is False  # the mask caps named entries
    group = acl(base[0], base[1], (GROUP, 4, 107), (MASK, 4, 0), base[2])
    assert acl_allows(group, 0, 0, QEMU, READ) is True
    # a matching group that does not grant denies, even though "other" would
    denied = acl(base[0], base[1], (GROUP, 0, 107), (MASK, 7, 0), (OTHER, 4, 0))
    assert acl_allows(denied, 0, 0, QEMU, READ) is False
    assert acl_allows(denied, 0, 0, UNPRIVILEGED, READ) is True
    # the owner entry applies to the owner, unmasked
    assert acl_allows(acl((USER_OBJ, 4, 0), (MASK, 0, 0), (OTHER, 0, 0)), 64055, 0, QEMU, READ) is True


def test_malformed_acls_fall_back_to_the_mode():
    assert acl_allows(b"\x02\0\0", 0, 0, QEMU, READ) is None
    assert acl_allows(struct.pack("<I", 1) + struct.pack("<HHI", OTHER, 4, 0), 0, 0, QEMU, READ) is None
    assert allows(0o644, 0, 0, QEMU, READ, acl=b"junk") is True


def test_qemu_user_takes_the_supplementary_groups_of_its_name():
    nobody = qemu_user(65534, 65534)
    assert nobody.uid == 65534 and 65534 in nobody.gids and "nobody" in nobody.name
    # libvirt's label may name another group: QEMU keeps the groups of the user's passwd entry too
    assert {12345, 65534} <= qemu_user(65534, 12345).gids
    unnamed = qemu_user(4_000_000_123, 4_000_000_123)
    assert unnamed.gids == frozenset({4_000_000_123}) and unnamed.name == "uid 4000000123"


# --------------------------------------------------------------- against the kernel (root only)


def kernel_allows(path: Path, uid: int, gid: int, flag: str) -> bool:
    """What the kernel says: ``test -r``/``-w``/``-x`` run as ``uid:gid`` (no supplementary groups)."""
    result = subprocess.run(["test", flag, str(path)], user=uid, group=gid, extra_groups=[])
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
def test_the_model_agrees_with_the_kernel():
    """Modes, owners, groups and ACLs (when the file system takes them) on real files and
    directories, as seen by ``nobody``: the model and the kernel must agree on every one."""
    nobody = QemuUser("nobody", 65534, frozenset({65534}))
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vc-access-"))
    try:
        base.chmod(0o755)
        cases = []
        for index, (mode, uid, gid) in enumerate(
            [
                (0o644, 0, 0),
                (0o640, 0, 65534),
                (0o604, 0, 65534),
                (0o400, 65534, 0),
                (0o044, 65534, 0),
                (0o600, 0, 0),
                (0o751, 0, 0),
                (0o750, 0, 65534),
                (0o705, 0, 65534),
            ]
        ):
            for kind in ("file", "dir"):
                path = base / f"{kind}{index}"
                path.mkdir() if kind == "dir" else path.write_bytes(b"x")
                os.chown(path, uid, gid)
                path.chmod(mode)
                cases.append(path)
        acls = {
            "named-user": acl(
                (USER_OBJ, 6, 0), (USER, 4, 65534), (GROUP_OBJ, 0, 0), (MASK, 4, 0), (OTHER, 0, 0)
            ),
            "masked": acl((USER_OBJ, 6, 0), (USER, 5, 65534), (GROUP_OBJ, 0, 0), (MASK, 0, 0), (OTHER, 5, 0)),
            "group-grants": acl(
                (USER_OBJ, 6, 0), (GROUP_OBJ, 0, 0), (GROUP, 5, 65534), (MASK, 5, 0), (OTHER, 0, 0)
            ),
            "named-user-denies": acl(
                (USER_OBJ, 6, 0), (USER, 0, 65534), (GROUP_OBJ, 0, 0), (MASK, 7, 0), (OTHER, 5, 0)
            ),
            "group-denies": acl(
                (USER_OBJ, 7, 0), (GROUP_OBJ, 0, 0), (GROUP, 0, 65534), (MASK, 7, 0), (OTHER, 5, 0)
            ),
        }
        for name, value in acls.items():
            for kind in ("file", "dir"):
                path = base / f"acl-{name}-{kind}"
                path.mkdir() if kind == "dir" else path.write_bytes(b"x")
                try:
                    os.setxattr(path, ACL_XATTR, value)
                except OSError:
                    continue  # no ACLs on this file system: the mode cases still run
                cases.append(path)
        checked = 0
        for path in cases:
            for flag, want in (("-r", READ), ("-w", WRITE), ("-x", SEARCH)):
                assert permits(path, nobody, want) is kernel_allows(path, 65534, 65534, flag), (path, flag)
                checked += 1
        assert checked == 54 + 30  # the ACL cases ran too (ext4 and tmpfs take ACLs)
    finally:
        shutil.rmtree(base)


def test_a_clear_mask_leaves_the_decision_to_the_mode():
    """Linux skips the ACL when the group bits (its mask) are 0: found by the kernel test below."""
    masked = acl((USER_OBJ, 6, 0), (USER, 5, 64055), (GROUP_OBJ, 0, 0), (MASK, 0, 0), (OTHER, 5, 0))
    assert acl_allows(masked, 0, 0, QEMU, READ) is False  # what POSIX.1e alone would say
    assert allows(0o605, 0, 0, QEMU, READ, acl=masked) is True  # what the kernel does
