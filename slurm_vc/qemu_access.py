"""Can QEMU reach a file?  The permission check the kernel will make when QEMU opens it.

libvirt runs QEMU as the user and group of its DAC security model (qemu.conf's ``user`` and
``group``; Debian: libvirt-qemu), with that user's supplementary groups, and by default with every
capability dropped, root included (``clear_emulator_capabilities``).  Files libvirt relabels
(chowns) are no concern; the shared catalog image is not relabelled (the domain XML says so), and
the directories above the images and the job directories never are.  So QEMU reaches them only
through their permission bits, or their POSIX ACL, as that user.

The decisions (:func:`allows`, :func:`acl_allows`, :func:`dac_label`) are pure; :func:`blocked`
and :func:`qemu_user` read the file system and the user database.  When QEMU's user is not known,
:data:`UNPRIVILEGED` stands for any user that owns nothing and is in no group: the "other" bits.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

READ, WRITE, SEARCH = 4, 2, 1

# POSIX ACL xattr (linux/posix_acl_xattr.h): a version word, then (tag, perm, id) entries.
ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_ENTRY = struct.Struct("<HHI")


@dataclass(frozen=True)
class QemuUser:
    """The identity QEMU runs with: uid, primary and supplementary group ids, and a name for messages."""

    name: str
    uid: int
    gids: frozenset[int]

    @property
    def who(self) -> str:
        """How messages name this identity: "other users" when QEMU's user is not known."""
        return "other users" if self.uid == UNPRIVILEGED.uid else f"QEMU's user {self.name}"


UNPRIVILEGED = QemuUser("an unprivileged user", -1, frozenset())


def dac_label(capabilities_xml: str, domain_type: str) -> Optional[tuple[int, int]]:
    """``(uid, gid)`` from libvirt's capabilities: the DAC model's base label for ``domain_type``
    (``<baselabel type='kvm'>+64055:+64055</baselabel>``); None when libvirt reports none."""
    from lxml import etree

    try:
        root = etree.fromstring(capabilities_xml.encode())
    except etree.XMLSyntaxError:
        return None
    for label in root.iterfind("host/secmodel/baselabel"):
        if label.get("type") == domain_type and label.getparent().findtext("model") == "dac":
            match = re.fullmatch(r"\+?(\d+):\+?(\d+)", (label.text or "").strip())
            if match:
                return int(match.group(1)), int(match.group(2))
    return None


def qemu_user(uid: int, gid: int) -> QemuUser:
    """The QemuUser for ``uid:gid``, with the groups libvirt gives QEMU (``virGetGroupList``):
    ``gid``, plus ``getgrouplist`` of the user's name and its primary group in the password
    database; only ``gid`` for a uid without a name."""
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return QemuUser(f"uid {uid}", uid, frozenset({gid}))
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return QemuUser(f"{entry.pw_name} (uid {uid})", uid, frozenset({gid, *groups}))


def user_named(name: str) -> Optional[QemuUser]:
    """The QemuUser of a user name and its primary group (qemu.conf's ``user``), None if unknown."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return qemu_user(entry.pw_uid, entry.pw_gid)


def acl_allows(acl: bytes, owner: int, group: int, user: QemuUser, want: int) -> Optional[bool]:
    """The kernel's POSIX ACL check (``posix_acl_permission``) of ``want`` for ``user`` on a file of
    ``owner:group``; None when ``acl`` is not a well-formed access ACL (fall back to the mode)."""
    if len(acl) < 4 or (len(acl) - 4) % _ACL_ENTRY.size or struct.unpack_from("<I", acl)[0] != ACL_VERSION:
        return None
    entries = [_ACL_ENTRY.unpack_from(acl, offset) for offset in range(4, len(acl), _ACL_ENTRY.size)]
    mask = next((perm for tag, perm, _ in entries if tag == MASK), 7)
    group_found = False
    for tag, perm, ident in entries:
        if tag == USER_OBJ and user.uid == owner:
            return perm & want == want
        if tag == USER and user.uid == ident:
            return perm & mask & want == want
        if tag in (GROUP_OBJ, GROUP) and (group if tag == GROUP_OBJ else ident) in user.gids:
            group_found = True
            if perm & mask & want == want:
                return True
    if group_found:
        return False
    return any(tag == OTHER and perm & want == want for tag, perm, _ in entries)


def allows(mode: int, owner: int, group: int, user: QemuUser, want: int, acl: Optional[bytes] = None) -> bool:
    """Does a file of ``mode`` and ``owner:group`` (and ``acl``, if it has one) grant ``want``
    (READ, WRITE, SEARCH bits) to ``user``?  No capability overrides: libvirt drops them.

    As Linux's ``acl_permission_check``: the owner gets the owner bits whatever the ACL says, and
    the ACL is consulted only while the group bits (the ACL's mask) are not all clear; with a mask
    of 0 the mode decides, so a named user of a 0605 file reads it through the "other" bits.
    """
    if acl is not None and user.uid != owner and mode & 0o070:
        verdict = acl_allows(acl, owner, group, user, want)
        if verdict is not None:
            return verdict
    if user.uid == owner:
        bits = mode >> 6
    elif group in user.gids:
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


def _acl(path: Path) -> Optional[bytes]:
    try:
        return os.getxattr(path, ACL_XATTR)
    except OSError:  # none (ENODATA), or a file system without ACLs
        return None


def permits(path: Path, user: QemuUser, want: int) -> bool:
    """Does ``path`` itself grant ``want`` to ``user`` (mode and ACL; not the directories above)?"""
    info = path.stat()
    return allows(info.st_mode, info.st_uid, info.st_gid, user, want, _acl(path))


def closed_directories(directories: list[Path], user: QemuUser) -> list[Path]:
    """The existing directories among ``directories`` that ``user`` cannot search."""
    return [path for path in directories if path.is_dir() and not permits(path, user, SEARCH)]


def closed_above(path: Path, qemu: QemuUser) -> list[Path]:
    """The directories above ``path`` (as written, and with symlinks resolved) that ``qemu`` cannot
    search: QEMU cannot reach ``path`` through them."""
    chain = list(dict.fromkeys([*path.parents, *path.resolve().parents]))
    return closed_directories(chain, qemu)


def describe_mode(path: Path) -> str:
    """``mode 0640, owner 0:0`` of ``path``, for messages."""
    info = path.stat()
    return f"mode {info.st_mode & 0o7777:04o}, owner {info.st_uid}:{info.st_gid}"


__all__ = [
    "READ",
    "SEARCH",
    "UNPRIVILEGED",
    "WRITE",
    "QemuUser",
    "acl_allows",
    "allows",
    "closed_above",
    "closed_directories",
    "dac_label",
    "describe_mode",
    "permits",
    "qemu_user",
    "user_named",
]
