"""The ``--vcluster`` request grammar, parsed and validated in one place.

Grammar (documented in README and docs/admin.md)::

    REQUEST := IMAGE ( "," OPTION )*
    OPTION  := "vcpus=" N          vCPUs per guest (default: one per allocated physical core)
             | "mem=" SIZE         guest memory, a whole number of MiB (default: the job's memory on
                                   the node, less host reserve)
             | "pages=" 2M|1G|none hugepage size (default: the site's)

At submit time only the catalog is consulted (image files need not be visible on login nodes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from .configfile import PAGE_SIZES, Catalog
from .errors import RequestError, UsageError
from .units import MIB, SIZE_HELP, format_size, parse_size

if TYPE_CHECKING:  # pragma: no cover
    from .config import SiteConfig

MAX_REQUEST_LENGTH = 256
_ALLOWED_CHARS_RE = re.compile(r"[A-Za-z0-9._=,-]*")  # fullmatch: "$" would allow a final "\n"
OPTION_KEYS = ("vcpus", "mem", "pages")
GRAMMAR_HELP = "IMAGE[,vcpus=N][,mem=SIZE][,pages=2M|1G|none]"


@dataclass(frozen=True)
class VClusterRequest:
    """A validated request: image name plus optional overrides."""

    image: str
    vcpus: Optional[int] = None
    memory: Optional[int] = None  # bytes
    page_size: Optional[int] = None  # bytes, 0 = no hugepages; None = site default

    def to_spec(self) -> str:
        """The canonical request text (what the prolog receives)."""
        parts = [self.image]
        if self.vcpus is not None:
            parts.append(f"vcpus={self.vcpus}")
        if self.memory is not None:
            # MiB, unless that needs more digits than the grammar takes (mem=999999999999999T):
            # then the largest exact unit, which never has more digits than the value parsed.
            mib = str(self.memory // MIB) + "M"
            parts.append("mem=" + (mib if len(mib) <= 16 else format_size(self.memory)))
        if self.page_size is not None:
            parts.append("pages=" + {v: k for k, v in PAGE_SIZES.items()}[self.page_size])
        return ",".join(parts)


MAX_LISTED_IMAGES = 20


def _image_list(images: Iterable[str]) -> str:
    """The catalog's names for an error message, at most MAX_LISTED_IMAGES of them."""
    names = sorted(images)
    if not names:
        return "(none configured)"
    more = len(names) - MAX_LISTED_IMAGES
    return ", ".join(names[:MAX_LISTED_IMAGES]) + (f", and {more} more" if more > 0 else "")


def parse_request(text: str, config: Union[SiteConfig, Catalog]) -> VClusterRequest:
    """Parse and validate a ``--vcluster`` value against the site catalog.  Raises RequestError.

    Only ``config.images`` is consulted: the whole site config, or at submit time just its
    :class:`~slurm_vc.configfile.Catalog` (no pydantic needed).
    """
    if text is None or text.strip() == "":
        raise RequestError(f"--vcluster needs a value: {GRAMMAR_HELP}")
    if len(text) > MAX_REQUEST_LENGTH:
        raise RequestError(
            f"--vcluster value is {len(text)} characters long; at most {MAX_REQUEST_LENGTH} allowed"
        )
    if not _ALLOWED_CHARS_RE.fullmatch(text):
        bad = sorted({ch for ch in text if not _ALLOWED_CHARS_RE.fullmatch(ch)})
        shown = " ".join(repr(ch) for ch in bad)
        raise RequestError(
            f"--vcluster value contains {shown}: only letters, digits and . _ - = , are allowed"
            f" ({GRAMMAR_HELP})"
        )
    image, *options = text.split(",")
    if image == "":
        raise RequestError(
            f"--vcluster {text!r} does not start with an image name: expected {GRAMMAR_HELP};"
            f" available images: {_image_list(config.images)}"
        )
    if image not in config.images:
        raise RequestError(
            f"unknown image {image!r} in --vcluster; available images: {_image_list(config.images)}"
        )

    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise RequestError(f"--vcluster option {option!r} must be KEY=VALUE ({GRAMMAR_HELP})")
        if key not in OPTION_KEYS:
            raise RequestError(f"unknown --vcluster option {key!r}; allowed: {', '.join(OPTION_KEYS)}")
        if key in values:
            raise RequestError(f"--vcluster option {key!r} given twice")
        values[key] = value

    vcpus = None
    if "vcpus" in values:
        if not values["vcpus"].isdigit() or not 1 <= int(values["vcpus"]) <= 4096:
            raise RequestError(
                f"--vcluster vcpus={values['vcpus']!r}: expected a whole number from 1 to 4096"
            )
        vcpus = int(values["vcpus"])
    memory = None
    if "mem" in values:
        try:
            memory = parse_size(values["mem"], what="--vcluster mem")
        except UsageError as exc:
            raise RequestError(str(exc)) from None
        if memory % MIB:
            raise RequestError(
                f"--vcluster mem={values['mem']!r}: the guest's memory must be a whole number of MiB"
                f" (at least 1M, e.g. 512M or 4G); {format_size(memory)} is not"
            )
    page_size = None
    if "pages" in values:
        if values["pages"] not in PAGE_SIZES:
            raise RequestError(f"--vcluster pages={values['pages']!r}: allowed are 2M, 1G or none")
        page_size = PAGE_SIZES[values["pages"]]
    return VClusterRequest(image=image, vcpus=vcpus, memory=memory, page_size=page_size)


__all__ = ["VClusterRequest", "parse_request", "GRAMMAR_HELP", "MAX_REQUEST_LENGTH", "SIZE_HELP"]
