/* A pod's sandbox process (what Kubernetes' pause image runs): it holds
 * the pod's namespaces, reaps orphans when it is the init of a pid
 * namespace the pod shares, and leaves on TERM or INT. Built static by
 * bundles/oci-image.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    signal(SIGCHLD, reap);
    for (;;)
        pause();
}
