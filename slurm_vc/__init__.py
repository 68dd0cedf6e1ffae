"""slurm-vc: a per-job virtual cluster of pinned, hugepage-backed guests for Slurm jobs."""

__version__ = "0.1.0"
