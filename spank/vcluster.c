/*
 * slurm-vc SPANK plugin entry points.  Each one dispatches on the SPANK context:
 *
 *   ALLOCATOR (sbatch/salloc) and LOCAL (srun):  init -> option callback (validates at submit)
 *                                                -> init_post_opt (hands the value to prolog/epilog)
 *   REMOTE (slurmstepd):                         init -> option callback -> task_init (task wrapping)
 *
 * Only the slurm_spank_* functions and the SPANK_PLUGIN data symbols are exported; everything
 * else is built with -fvisibility=hidden.
 */
#include <stdlib.h>
#include <string.h>

#include "vcluster.h"

#pragma GCC visibility push(default)
SPANK_PLUGIN(vcluster, 1);
#pragma GCC visibility pop

#define EXPORT __attribute__((visibility("default")))

EXPORT int slurm_spank_init(spank_t sp, int ac, char **av)
{
	char err[VC_MAX_MESSAGE];
	spank_context_t ctx = spank_context();

	if (vc_config_parse(&vc_conf, ac, av, err, sizeof(err)) != 0) {
		slurm_error(VC_PREFIX "%s", err);
		return -1;
	}
	/* Options exist where users give them (sbatch/salloc/srun) and where they are read (slurmstepd). */
	if (ctx == S_CTX_ALLOCATOR || ctx == S_CTX_LOCAL || ctx == S_CTX_REMOTE)
		return vc_options_register(sp);
	return 0;
}

EXPORT int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	const char *value = vc_option_value();
	spank_context_t ctx = spank_context();
	spank_err_t rc;

	(void)ac;
	(void)av;
	/* Never fail in remote context: that has been seen to leave jobs pending and nodes drained. */
	if (value == NULL || (ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL))
		return 0;
	/* srun inside an existing job creates no allocation: there is no prolog to tell. */
	if (ctx == S_CTX_LOCAL && getenv("SLURM_JOB_ID") != NULL)
		return 0;
	rc = spank_job_control_setenv(sp, VC_CONTROL_ENV, value, 1);
	if (rc != ESPANK_SUCCESS) {
		slurm_error(VC_PREFIX "cannot pass --vcluster to the prolog: %s", spank_strerror(rc));
		return -1;
	}
	return 0;
}

EXPORT int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	return vc_task_wrap(sp);
}
