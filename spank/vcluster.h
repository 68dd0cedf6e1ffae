/*
 * slurm-vc SPANK plugin: shared declarations.
 *
 * Only what must be C lives here: the --vcluster option, the submit-time check (by running
 * `slurm-vc validate-request`), handing the value to prolog/epilog, and wrapping srun tasks so
 * they run inside the node's guest.  Everything else is Python (slurm_vc/).
 */
#ifndef SLURM_VC_SPANK_H
#define SLURM_VC_SPANK_H

#include <slurm/spank.h>

#define VC_PREFIX "vcluster: "
#define VC_MAX_VALUE 256                /* request.py MAX_REQUEST_LENGTH */
#define VC_MAX_MESSAGE 1024

/* Defaults, overridable in plugstack.conf. */
#define VC_DEFAULT_VALIDATOR "/usr/bin/slurm-vc"
#define VC_DEFAULT_WRAPPER "/usr/libexec/slurm-vc/slurm-vc-exec"
#define VC_DEFAULT_TIMEOUT 20           /* seconds for the validator */

/* Environment the plugin sets or reads. */
#define VC_CONTROL_ENV "VCLUSTER"       /* prolog/epilog see SPANK_VCLUSTER */
#define VC_TASK_ENV "SLURM_SPANK_VCLUSTER" /* what tasks see of the control env */
#define VC_HOST_ENV "SLURM_VC_HOST"     /* =1: run this step's tasks on the host */
#define VC_ARGV0_ENV "SLURM_VC_EXEC_ARGV0" /* the task's original argv[0] for the wrapper */

/* config.c: plugstack.conf arguments (key=value, unknown key = error). */
struct vc_config {
	char validator[4096];   /* validator=PATH  (the slurm-vc executable) */
	char config[4096];      /* config=PATH     (site config passed as --config; "" = default) */
	char wrapper[4096];     /* wrapper=PATH    (task wrapper, slurm-vc-exec) */
	int required;           /* required=0|1    (1: a validator that cannot run rejects the job) */
	int timeout;            /* timeout=SECONDS (validator time limit) */
	int wrap_tasks;         /* wrap=0|1        (run srun tasks inside the guest) */
};

extern struct vc_config vc_conf;

int vc_config_parse(struct vc_config *conf, int ac, char **av, char *err, size_t errlen);

/* options.c: option registration and the values seen. */
int vc_options_register(spank_t sp);
const char *vc_option_value(void);   /* NULL when --vcluster was not given */
int vc_option_host(void);            /* 1 when --vcluster-host was given */

/* validate.c: run `<validator> [--config C] validate-request --quiet VALUE`. */
int vc_validate(const struct vc_config *conf, const char *value, char *msg, size_t msglen);

/* task.c: wrap the task's argv[0] with the guest launcher. */
int vc_task_wrap(spank_t sp);

#endif
