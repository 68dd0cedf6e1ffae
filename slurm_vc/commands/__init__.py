"""One module per ``slurm-vc`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
