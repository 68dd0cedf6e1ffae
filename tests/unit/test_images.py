"""check_base_image: the catalog image checks that run before any overlay is made."""

import shutil
import tempfile
from pathlib import Path

import pytest

from slurm_vc.errors import ImageError
from slurm_vc.images import check_base_image


@pytest.fixture
def open_dir():
    """A directory every user can search (pytest's own base directory is 0700)."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vc-images-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_world_readable_image_passes(open_dir):
    image = open_dir / "base.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    image.chmod(0o444)
    assert check_base_image(str(image)) == image


def test_an_image_qemu_cannot_reach_names_the_closed_directory(open_dir):
    """QEMU opens the base image as another user: a 0750 directory above it stops it (a libvirt
    error that drained the node, before this check made it the image's fault)."""
    closed = open_dir / "catalog"
    closed.mkdir()
    image = closed / "base.qcow2"
    image.write_bytes(b"QFI\xfb")
    image.chmod(0o444)
    closed.chmod(0o750)
    with pytest.raises(ImageError) as info:
        check_base_image(str(image))
    assert f"below {closed}, which other users cannot search" in str(info.value)
    assert info.value.fix == f"chmod o+x {closed}"
    assert check_base_image(str(image), qemu=None) == image  # kernels: libvirt relabels them


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: (p.write_bytes(b"x"), p.chmod(0o440)), "world-readable (chmod o+r"),
    ],
)
def test_bad_images_name_the_path_and_the_fix(tmp_path, make, needle):
    image = tmp_path / "base.qcow2"
    make(image)
    with pytest.raises(ImageError) as info:
        check_base_image(str(image))
    assert str(image) in str(info.value) and needle in str(info.value)


def test_relative_path_is_refused():
    with pytest.raises(ImageError, match="must be absolute"):
        check_base_image("images/base.qcow2")


def test_an_image_shared_with_qemus_group_passes_only_for_that_group(open_dir, share_with_group):
    """A site's 0640 root:kvm image in a 0750 root:kvm directory: QEMU, in group kvm, reads it.
    Before QEMU's user was known this was refused as "must be world-readable"."""

    from slurm_vc.qemu_access import UNPRIVILEGED, QemuUser

    group = 65534
    catalog = open_dir / "catalog"
    catalog.mkdir()
    image = catalog / "base.qcow2"
    image.write_bytes(b"QFI\xfb")
    share_with_group(image, group)
    in_group = QemuUser("libvirt-qemu (uid 64055)", 64055, frozenset({64055, group}))
    assert check_base_image(str(image), qemu=in_group) == image
    with pytest.raises(ImageError, match="world-readable"):
        check_base_image(str(image), qemu=UNPRIVILEGED)
    outsider = QemuUser("libvirt-qemu (uid 64055)", 64055, frozenset({64055}))
    with pytest.raises(ImageError) as info:
        check_base_image(str(image), qemu=outsider)
    assert "mode 0640, owner 0:65534" in str(info.value) and "QEMU's user libvirt-qemu (uid 64055)" in str(
        info.value
    )
    image.chmod(0o644)
    with pytest.raises(ImageError, match=f"below {catalog}, which QEMU's user libvirt-qemu"):
        check_base_image(str(image), qemu=outsider)


def test_a_symlinked_directory_is_checked_where_it_leads(open_dir):
    """QEMU follows the link: the directories above the target must be searchable as well."""
    hidden = open_dir / "hidden"
    (hidden / "real").mkdir(parents=True)
    image = hidden / "real" / "base.qcow2"
    image.write_bytes(b"QFI\xfb")
    image.chmod(0o644)
    hidden.chmod(0o700)
    link = open_dir / "images"
    link.symlink_to(hidden / "real")
    with pytest.raises(ImageError) as info:
        check_base_image(str(link / "base.qcow2"))
    assert info.value.fix == f"chmod o+x {hidden}"
