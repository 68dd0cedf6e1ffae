/*
 * Task wrapping (remote context, slurm_spank_task_init): in a --vcluster job, each task of an srun
 * step runs inside this node's guest.  argv[0] is replaced in place by the wrapper (slurm-vc-exec)
 * and the original argv[0] travels in SLURM_VC_EXEC_ARGV0; the wrapper ssh-es into the guest with
 * the job key and runs the command with stdio and exit code preserved.  Replacing argv[0] (rather
 * than execve from here) keeps the TaskProlog, TMPDIR and limits, and `srun -l` labels intact.
 * The argv array cannot grow, which is why the original argv[0] goes through the environment.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcluster.h"

/* Batch, extern, interactive and pending pseudo-steps: never wrapped (the batch script runs on the host). */
#define VC_FIRST_PSEUDO_STEP 0xfffffff0u

static int env_is(spank_t sp, const char *name, const char *want)
{
	char buf[64];

	if (spank_getenv(sp, name, buf, sizeof(buf)) != ESPANK_SUCCESS)
		return 0;
	return strcmp(buf, want) == 0;
}

static int job_has_vcluster(spank_t sp)
{
	char buf[VC_MAX_VALUE + 1];

	if (vc_option_value() != NULL)
		return 1;
	return spank_getenv(sp, VC_TASK_ENV, buf, sizeof(buf)) == ESPANK_SUCCESS && buf[0] != '\0';
}

int vc_task_wrap(spank_t sp)
{
	uint32_t stepid = 0;
	int argc = 0;
	char **argv = NULL;
	char *wrapper;

	if (!vc_conf.wrap_tasks)
		return 0;
	if (spank_get_item(sp, S_JOB_STEPID, &stepid) != ESPANK_SUCCESS || stepid >= VC_FIRST_PSEUDO_STEP)
		return 0;
	if (!job_has_vcluster(sp))
		return 0;
	if (vc_option_host() || env_is(sp, VC_HOST_ENV, "1"))
		return 0;
	if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 || argv == NULL
	    || argv[0] == NULL) {
		slurm_error(VC_PREFIX "cannot read the task's command line; not wrapping it");
		return -1;
	}
	if (access(vc_conf.wrapper, X_OK) != 0) {
		slurm_error(VC_PREFIX "the task wrapper %s is not executable on this node "
			    "(set wrapper= in plugstack.conf, or run the step with --vcluster-host)",
			    vc_conf.wrapper);
		return -1;
	}
	if (spank_setenv(sp, VC_ARGV0_ENV, argv[0], 1) != ESPANK_SUCCESS) {
		slurm_error(VC_PREFIX "cannot pass the task's command to the wrapper");
		return -1;
	}
	wrapper = strdup(vc_conf.wrapper);
	if (wrapper == NULL)
		return -1;
	/* The old argv[0] belongs to slurmstepd; this task process execs right after, so nothing leaks. */
	argv[0] = wrapper;
	return 0;
}
