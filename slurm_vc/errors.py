"""The exception hierarchy and the documented exit codes.

Every error the user or the admin can see is a :class:`VcError`.  Its message is written for
the person who has to act on it; ``exit_code`` is what the CLI exits with.  The split between
user faults (the request, the image) and node faults (hypervisor, host resources) decides
whether Slurm may drain a node: see ``docs/admin.md``.
"""

from __future__ import annotations

# Exit codes (documented in docs/admin.md, section "Exit codes").
EXIT_OK = 0
EXIT_USAGE = 2  # bad command line or bad --vcluster request
EXIT_CONFIG = 3  # the site configuration is malformed or inconsistent
EXIT_PLACEMENT = 4  # the request cannot fit the allocation
EXIT_IMAGE = 5  # the catalog image is missing or unusable
EXIT_HOST = 6  # a host resource is broken (hugepages, bridge, sysfs)
EXIT_HYPERVISOR = 7  # libvirt/QEMU failed or is unreachable
EXIT_GUEST = 8  # the guest started but never became ready
EXIT_SLURM = 9  # Slurm could not be asked or answered nonsense
EXIT_STATE = 10  # the per-job state is unreadable or locked


class VcError(Exception):
    """Base of every slurm-vc error.  ``user_fault`` errors must never drain a node."""

    exit_code = 1
    user_fault = False

    def __init__(self, message: str, *, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix  # the one action that repairs it, when there is one (doctor shows it)

    def __str__(self) -> str:
        return self.message


class UsageError(VcError):
    """A malformed command line or --vcluster value."""

    exit_code = EXIT_USAGE
    user_fault = True


class RequestError(UsageError):
    """The --vcluster request is invalid (grammar, unknown image, bad sizes)."""


class ConfigError(VcError):
    """The site configuration file is missing, malformed or inconsistent."""

    exit_code = EXIT_CONFIG


class PlacementError(VcError):
    """The request does not fit the job's allocation on this node (a user fault)."""

    exit_code = EXIT_PLACEMENT
    user_fault = True


class ImageError(VcError):
    """The catalog image is missing or unusable (the user's choice of image)."""

    exit_code = EXIT_IMAGE
    user_fault = True


class HostError(VcError):
    """A host resource is missing or broken: a node fault an admin must fix."""

    exit_code = EXIT_HOST


class HugepageError(HostError):
    """The kernel could not provide the hugepages the plan needs."""


class NetworkError(HostError):
    """The bridge is missing, has a smaller MTU than configured, or a tap cannot be made."""


class HypervisorError(VcError):
    """libvirt is unreachable or QEMU refused the guest."""

    exit_code = EXIT_HYPERVISOR


class GuestNotReadyError(VcError):
    """The guest started but did not signal readiness in time.  Carries the console tail."""

    exit_code = EXIT_GUEST
    user_fault = True


class SlurmError(VcError):
    """Slurm could not be asked, or answered something we cannot parse."""

    exit_code = EXIT_SLURM


class StateError(VcError):
    """The per-job state directory is unreadable, corrupt or held by another process."""

    exit_code = EXIT_STATE
