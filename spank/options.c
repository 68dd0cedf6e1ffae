/*
 * The option table: --vcluster=SPEC (sbatch, salloc, srun, #SBATCH) and --vcluster-host (srun: run
 * this step's tasks on the host, not in the guest).  Callbacks only record values and, on the
 * submitting side, run the validator: they may be called more than once, so they are idempotent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcluster.h"

enum { OPT_VCLUSTER = 1, OPT_HOST = 2 };

static char value[VC_MAX_VALUE + 1];
static int have_value;
static int host_opt;

static int option_cb(int val, const char *optarg, int remote);

static struct spank_option vc_options[] = {
	{ "vcluster", "SPEC",
	  "Run the job in a virtual cluster: one pinned guest per node. "
	  "SPEC is IMAGE[,vcpus=N][,mem=SIZE][,pages=2M|1G|none].",
	  1, OPT_VCLUSTER, option_cb },
	{ "vcluster-host", NULL,
	  "In a --vcluster job, run this step's tasks on the host instead of inside the guests "
	  "(same as SLURM_VC_HOST=1).",
	  0, OPT_HOST, option_cb },
	SPANK_OPTIONS_TABLE_END
};

/* Submitting side = sbatch/salloc, or srun creating its own allocation (not a step in a job). */
static int submitting_side(int remote)
{
	spank_context_t ctx = spank_context();

	if (remote)
		return 0;
	if (ctx == S_CTX_ALLOCATOR)
		return 1;
	return ctx == S_CTX_LOCAL && getenv("SLURM_JOB_ID") == NULL;
}

static int option_cb(int val, const char *optarg, int remote)
{
	char msg[VC_MAX_MESSAGE];

	if (val == OPT_HOST) {
		host_opt = 1;
		return 0;
	}
	if (val != OPT_VCLUSTER)
		return -1;
	if (optarg == NULL || optarg[0] == '\0') {
		slurm_error(VC_PREFIX "--vcluster needs a value: IMAGE[,vcpus=N][,mem=SIZE][,pages=2M|1G|none]");
		return -1;
	}
	if (strlen(optarg) > VC_MAX_VALUE) {
		slurm_error(VC_PREFIX "--vcluster value is %zu characters long; at most %d allowed",
			    strlen(optarg), VC_MAX_VALUE);
		return -1;
	}
	if (submitting_side(remote) && vc_validate(&vc_conf, optarg, msg, sizeof(msg)) != 0) {
		slurm_error(VC_PREFIX "%s", msg);
		return -1;
	}
	strcpy(value, optarg);
	have_value = 1;
	return 0;
}

int vc_options_register(spank_t sp)
{
	struct spank_option *opt;

	for (opt = vc_options; opt->name; opt++) {
		spank_err_t rc = spank_option_register(sp, opt);

		if (rc != ESPANK_SUCCESS) {
			slurm_error(VC_PREFIX "cannot register --%s: %s", opt->name, spank_strerror(rc));
			return -1;
		}
	}
	return 0;
}

const char *vc_option_value(void)
{
	return have_value ? value : NULL;
}

int vc_option_host(void)
{
	return host_opt;
}
