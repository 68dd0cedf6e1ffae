/*
 * Submit-time check: run `<validator> [--config FILE] validate-request --quiet VALUE` directly
 * (fork + execv, no shell, so the value is never interpreted), as the submitting user, with a time
 * limit.  Its last non-empty output line becomes the message sbatch/salloc/srun print.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vcluster.h"

#define EXEC_FAILED 127

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* The last non-empty line of buf, without its newline, copied into msg. */
static void last_line(const char *buf, char *msg, size_t msglen)
{
	const char *end = buf + strlen(buf);
	const char *start;

	while (end > buf && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		end--;
	start = end;
	while (start > buf && start[-1] != '\n')
		start--;
	snprintf(msg, msglen, "%.*s", (int)(end - start), start);
}

static void child(const struct vc_config *conf, const char *value, int out_fd)
{
	char *argv[8];
	int i = 0;

	setpgid(0, 0); /* its own group, so a timeout kills the validator and anything it started */
	dup2(out_fd, STDOUT_FILENO);
	dup2(out_fd, STDERR_FILENO);
	i = open("/dev/null", O_RDONLY);
	if (i >= 0) {
		dup2(i, STDIN_FILENO);
		close(i);
	}
	i = 0;
	argv[i++] = (char *)conf->validator;
	if (conf->config[0]) {
		argv[i++] = "--config";
		argv[i++] = (char *)conf->config;
	}
	argv[i++] = "validate-request";
	argv[i++] = "--quiet";
	argv[i++] = "--";
	argv[i++] = (char *)value;
	argv[i] = NULL;
	execv(conf->validator, argv);
	dprintf(STDERR_FILENO, "cannot run the validator %s: %s\n", conf->validator, strerror(errno));
	_exit(EXEC_FAILED);
}

static int run_validator(const struct vc_config *conf, const char *value, char *msg, size_t msglen);

/*
 * 0: the value is valid (or the validator could not run and required=0).
 * -1: reject, with msg set to the reason for the user.
 */
int vc_validate(const struct vc_config *conf, const char *value, char *msg, size_t msglen)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL }, old;
	int restore = 0;
	int rc;

	/*
	 * A submitting process that ignores SIGCHLD (inherited across exec) has its children reaped
	 * by the kernel: waitpid() would fail with ECHILD and never see the validator's exit status.
	 * Take the default disposition for the validator's lifetime only; a real handler is left alone.
	 */
	if (sigaction(SIGCHLD, NULL, &old) == 0 && old.sa_handler == SIG_IGN && !(old.sa_flags & SA_SIGINFO)) {
		sigemptyset(&dfl.sa_mask);
		restore = sigaction(SIGCHLD, &dfl, NULL) == 0;
	}
	rc = run_validator(conf, value, msg, msglen);
	if (restore)
		sigaction(SIGCHLD, &old, NULL);
	return rc;
}

static int run_validator(const struct vc_config *conf, const char *value, char *msg, size_t msglen)
{
	char out[4096] = "";
	size_t used = 0;
	int fds[2];
	pid_t pid;
	int status = 0;
	int timed_out = 0;
	int reaped = 0;
	int wait_errno = 0;
	long deadline = now_ms() + conf->timeout * 1000L;
	int rc = -1;

	msg[0] = '\0';
	if (pipe2(fds, O_CLOEXEC) != 0) {
		snprintf(msg, msglen, "cannot create a pipe for the validator: %s", strerror(errno));
		return conf->required ? -1 : 0;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(msg, msglen, "cannot fork the validator: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return conf->required ? -1 : 0;
	}
	if (pid == 0)
		child(conf, value, fds[1]);
	setpgid(pid, pid); /* as the child does: whichever runs first, the timeout's kill(-pid) finds the group */
	close(fds[1]);

	/* Read until EOF or the deadline; keep the most recent output if it overflows. */
	for (;;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		long left = deadline - now_ms();
		ssize_t n;

		if (left <= 0) {
			timed_out = 1;
			break;
		}
		n = poll(&pfd, 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			timed_out = n == 0;
			break;
		}
		if (used == sizeof(out) - 1) {
			memmove(out, out + sizeof(out) / 2, sizeof(out) / 2);
			used -= sizeof(out) / 2;
		}
		n = read(fds[0], out + used, sizeof(out) - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
		out[used] = '\0';
	}
	close(fds[0]);
	/* EOF does not mean exit: keep the deadline while waiting for the validator itself. */
	while (!timed_out) {
		pid_t done = waitpid(pid, &status, WNOHANG);

		if (done == pid) {
			reaped = 1;
			break;
		}
		if (done < 0 && errno != EINTR) {
			wait_errno = errno;
			break;
		}
		if (now_ms() >= deadline) {
			timed_out = 1;
			break;
		}
		usleep(10000);
	}
	if (timed_out) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL); /* in case it had left its group */
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}

	if (timed_out) {
		snprintf(msg, msglen, "the validator %s did not answer within %d s", conf->validator, conf->timeout);
		rc = conf->required ? -1 : 0;
	} else if (!reaped) {
		/* Never taken for a success: its exit status is unknown. */
		snprintf(msg, msglen, "cannot learn the result of the validator %s: %s", conf->validator,
			 strerror(wait_errno));
		rc = conf->required ? -1 : 0;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		rc = 0;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == EXEC_FAILED) {
		last_line(out, msg, msglen);
		rc = conf->required ? -1 : 0;
	} else {
		last_line(out, msg, msglen);
		if (msg[0] == '\0')
			snprintf(msg, msglen, "invalid --vcluster=%s (the validator failed without a message)", value);
		rc = -1;
	}
	if (rc == 0 && msg[0] && (timed_out || !reaped || WEXITSTATUS(status) == EXEC_FAILED))
		slurm_info(VC_PREFIX "not checked at submit (required=0): %s", msg);
	return rc;
}
