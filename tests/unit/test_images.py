"""check_base_image: the catalog image checks that run before any overlay is made."""

import pytest

from slurm_vc.errors import ImageError
from slurm_vc.images import check_base_image


def test_readable_world_readable_image_passes(tmp_path):
    image = tmp_path / "base.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    image.chmod(0o444)
    assert check_base_image(str(image)) == image


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
