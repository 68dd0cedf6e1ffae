"""Per-job copy-on-write overlays over catalog images.

Each guest boots from a qcow2 overlay in its job directory whose backing file is the catalog image,
named by absolute path with its format given explicitly (``-F``), so QEMU never probes the format and
never writes the catalog image: all writes land in the overlay, which teardown deletes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HostError, ImageError
from .qemu_access import READ, UNPRIVILEGED, QemuUser, closed_above, describe_mode, permits

if TYPE_CHECKING:  # an annotation only: importing images.py does not pull in pydantic
    from .config import ImageSpec

QEMU_IMG = "qemu-img"
IMAGE_FORMATS = ("qcow2", "raw")


def overlay_path(job_dir: str | os.PathLike, name: str) -> Path:
    """Where the overlay for guest ``name`` lives in ``job_dir``."""
    return Path(job_dir) / f"{name}.qcow2"


def check_boot_files(image: ImageSpec) -> None:
    """The image's direct-kernel-boot kernel and initrd, if it has them, exist and are readable
    (ImageError otherwise: the user's choice of image, not a libvirt fault).  libvirt hands them to
    QEMU itself, relabelled, so QEMU's own access does not matter."""
    for boot_file in (image.kernel, image.initrd):
        if boot_file:
            check_base_image(boot_file, qemu=None)


def check_base_image(base_image: str | os.PathLike, *, qemu: QemuUser | None = UNPRIVILEGED) -> Path:
    """The base image as an absolute path, after checking it is a readable regular file.

    A disk image must also be readable by QEMU, through every directory above it: QEMU opens it
    itself, as ``qemu`` (libvirt's DAC user; UNPRIVILEGED when not known: the "other" bits), and
    libvirt is told not to relabel the shared image.  ``qemu=None`` for a direct-kernel-boot kernel
    or initrd, which libvirt hands to QEMU itself (it relabels them).
    """
    path = Path(base_image)
    if not path.is_absolute():
        raise ImageError(f"catalog image path {str(path)!r} must be absolute")
    if not path.exists():
        raise ImageError(f"catalog image {path} does not exist on this node")
    if not path.is_file():
        raise ImageError(f"catalog image {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            handle.read(512)
    except OSError as exc:
        raise ImageError(f"catalog image {path} is not readable: {exc.strerror}") from None
    if qemu is None:
        return path
    if not permits(path, qemu, READ):
        fix = f"chmod o+r {path}"
        if qemu is UNPRIVILEGED:
            message = f"catalog image {path} must be world-readable ({fix})"
        else:
            message = f"catalog image {path} ({describe_mode(path)}) is not readable by {qemu.who} ({fix})"
        raise ImageError(message, fix=fix)
    closed = [str(parent) for parent in closed_above(path, qemu)]
    if closed:
        fix = f"chmod o+x {' '.join(closed)}"
        raise ImageError(
            f"catalog image {path} is below {', '.join(closed)}, which {qemu.who} cannot search:"
            f" QEMU cannot reach it ({fix})",
            fix=fix,
        )
    return path


def create_overlay(
    base_image: str | os.PathLike,
    job_dir: str | os.PathLike,
    name: str,
    base_format: str = "qcow2",
    qemu_img: str = QEMU_IMG,
    qemu: QemuUser = UNPRIVILEGED,
) -> Path:
    """Create ``job_dir/<name>.qcow2`` backed by ``base_image`` and return its path.

    The base is only read (qemu-img opens it read-only to learn its size).  Raises ImageError when
    the base is missing, unreadable (by us, or by QEMU running as ``qemu``) or not in
    ``base_format``; HostError when the overlay cannot be written (full or read-only disk).
    """
    if base_format not in IMAGE_FORMATS:
        allowed = ", ".join(IMAGE_FORMATS)
        raise ImageError(f"image format {base_format!r} is not supported; use one of {allowed}")
    base = check_base_image(base_image, qemu=qemu)
    target = overlay_path(job_dir, name)
    try:
        Path(job_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HostError(f"cannot create overlay {target}: cannot make {job_dir}: {exc.strerror}") from None
    command = [qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(target)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise HostError(f"{qemu_img} is not installed on this node (package qemu-utils)") from None
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        message = " ".join((result.stderr or result.stdout).split())
        # "Could not create '<overlay>': ..." is about our side (disk full, permissions): a node fault.
        # Anything else ("Image is not in qcow2 format", "Could not open backing image") is the image's.
        if "Could not create" in message:
            raise HostError(f"cannot create overlay {target}: {message}")
        raise ImageError(f"catalog image {base} cannot back an overlay as {base_format}: {message}")
    return target


def remove_overlay(path: str | os.PathLike) -> bool:
    """Delete an overlay.  True if it existed; False if it was already gone (idempotent)."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise HostError(f"cannot remove overlay {path}: {exc.strerror}") from None
    return True


def image_info(path: str | os.PathLike, qemu_img: str = QEMU_IMG) -> dict:
    """``qemu-img info --output=json`` of an image (without following the backing chain)."""
    import json

    result = subprocess.run(
        [qemu_img, "info", "-U", "--output=json", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ImageError(f"cannot inspect image {path}: {result.stderr.strip()}")
    return json.loads(result.stdout)


__all__ = [
    "check_base_image",
    "check_boot_files",
    "create_overlay",
    "image_info",
    "overlay_path",
    "remove_overlay",
]
