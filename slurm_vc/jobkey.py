"""The job's SSH key pair, derived the same way on every node without talking between nodes.

Every guest of a job must trust the same key, and each node's prolog runs alone.  So the key is not
generated and shipped: its 32-byte ed25519 seed is ``HMAC-SHA256(site secret, label || job id)``,
where the site secret is a root-only file present on every compute node (``job_key_secret`` in the
site config; by default Slurm's own ``/etc/munge/munge.key``, which every node already shares).

- Deterministic: every node derives the same pair for job J; the prolog puts the public half into
  its guest's seed and the private half (mode 0600, owned by the job user) where the job can use it.
- One-way: a user holding job J's private key learns nothing about the secret or other jobs' keys.
- A job that is requeued gets the same key (same job id), which is what its guests expect.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .errors import HostError

LABEL = b"slurm-vc job ssh key v1\x00"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class JobKey:
    """An OpenSSH ed25519 key pair for one job."""

    private_openssh: bytes  # "-----BEGIN OPENSSH PRIVATE KEY-----" PEM text
    public_openssh: str  # "ssh-ed25519 AAAA... slurm-vc-job-<id>"


def read_secret(path: str) -> bytes:
    """The site secret.  A missing, unreadable or tiny file is a node fault (HostError)."""
    try:
        with open(path, "rb") as handle:
            secret = handle.read()
    except OSError as exc:
        raise HostError(
            f"cannot read the job key secret {path}: {exc.strerror} "
            "(job_key_secret in the site config; it must exist on every compute node, readable by root)"
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise HostError(
            f"the job key secret {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return secret


def derive_seed(secret: bytes, job_id: int) -> bytes:
    """The 32-byte ed25519 seed of job ``job_id``."""
    return hmac.new(secret, LABEL + str(int(job_id)).encode(), hashlib.sha256).digest()


def job_key(secret: bytes, job_id: int) -> JobKey:
    """The job's key pair in OpenSSH formats."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(derive_seed(secret, job_id))
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return JobKey(private_openssh=private_pem, public_openssh=f"{public.decode()} slurm-vc-job-{int(job_id)}")


def job_key_from_file(secret_path: str, job_id: int) -> JobKey:
    """Convenience: read the secret and derive the job's key pair."""
    return job_key(read_secret(secret_path), job_id)


__all__ = ["JobKey", "derive_seed", "job_key", "job_key_from_file", "read_secret"]
