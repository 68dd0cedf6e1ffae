"""``python -m slurm_vc``: the CLI, as the Slurm hook scripts in prolog/ and epilog/ run it."""

from .cli import exit_fast, main

# The prolog and the epilog sit on every --vcluster job's critical path: skip the interpreter's
# teardown of lxml, libvirt and pydantic (~45 ms) once their work is done and flushed.
exit_fast(main())
