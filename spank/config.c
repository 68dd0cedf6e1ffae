/*
 * plugstack.conf arguments, parsed strictly: every argument is KEY=VALUE with a known KEY,
 * anything else is an error naming the argument (a typo must not silently change behaviour).
 *
 *   required optional /usr/lib/slurm/vcluster.so validator=/usr/bin/slurm-vc \
 *       config=/etc/slurm/vcluster.toml wrapper=/usr/libexec/slurm-vc/slurm-vc-exec \
 *       required=1 timeout=20 wrap=1
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcluster.h"

struct vc_config vc_conf;

static int set_path(char *dst, size_t dstlen, const char *key, const char *value, char *err, size_t errlen)
{
	if (value[0] != '/') {
		snprintf(err, errlen, "%s= needs an absolute path, got '%s'", key, value);
		return -1;
	}
	if (strlen(value) >= dstlen) {
		snprintf(err, errlen, "%s= is too long", key);
		return -1;
	}
	strcpy(dst, value);
	return 0;
}

static int set_int(int *dst, const char *key, const char *value, long lo, long hi, char *err, size_t errlen)
{
	char *end = NULL;
	long n;

	errno = 0;
	n = strtol(value, &end, 10);
	if (errno || end == value || *end != '\0' || n < lo || n > hi) {
		snprintf(err, errlen, "%s= must be a whole number from %ld to %ld, got '%s'", key, lo, hi, value);
		return -1;
	}
	*dst = (int)n;
	return 0;
}

/* Reset conf to the defaults and apply the plugstack.conf arguments.  0 or -1 with err set. */
int vc_config_parse(struct vc_config *conf, int ac, char **av, char *err, size_t errlen)
{
	int i;

	memset(conf, 0, sizeof(*conf));
	strcpy(conf->validator, VC_DEFAULT_VALIDATOR);
	strcpy(conf->wrapper, VC_DEFAULT_WRAPPER);
	conf->required = 1;
	conf->timeout = VC_DEFAULT_TIMEOUT;
	conf->wrap_tasks = 1;

	for (i = 0; i < ac; i++) {
		const char *arg = av[i];
		const char *eq = strchr(arg, '=');
		size_t keylen;
		const char *value;
		int rc;

		if (eq == NULL || eq == arg) {
			snprintf(err, errlen, "plugstack.conf argument '%s' is not KEY=VALUE", arg);
			return -1;
		}
		keylen = (size_t)(eq - arg);
		value = eq + 1;
#define KEY_IS(k) (keylen == strlen(k) && strncmp(arg, k, keylen) == 0)
		if (KEY_IS("validator"))
			rc = set_path(conf->validator, sizeof(conf->validator), "validator", value, err, errlen);
		else if (KEY_IS("config"))
			rc = set_path(conf->config, sizeof(conf->config), "config", value, err, errlen);
		else if (KEY_IS("wrapper") || KEY_IS("exec")) /* exec= : the name in early docs */
			rc = set_path(conf->wrapper, sizeof(conf->wrapper), "wrapper", value, err, errlen);
		else if (KEY_IS("required"))
			rc = set_int(&conf->required, "required", value, 0, 1, err, errlen);
		else if (KEY_IS("timeout"))
			rc = set_int(&conf->timeout, "timeout", value, 1, 3600, err, errlen);
		else if (KEY_IS("wrap"))
			rc = set_int(&conf->wrap_tasks, "wrap", value, 0, 1, err, errlen);
		else {
			snprintf(err, errlen,
				 "unknown plugstack.conf key '%.*s' (known: validator, config, wrapper (or exec), "
				 "required, timeout, wrap)", (int)keylen, arg);
			return -1;
		}
#undef KEY_IS
		if (rc)
			return -1;
	}
	return 0;
}
