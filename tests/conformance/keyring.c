/* Prints the serial of the calling process's session keyring (0 if none):
 * the conformance suite compares it inside and outside a container. */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    /* KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3), not created. */
    long id = syscall(SYS_keyctl, 0, -3, 0);
    printf("%ld\n", id < 0 ? 0 : id);
    return 0;
}
