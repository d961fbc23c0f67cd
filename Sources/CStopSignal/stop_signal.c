// See stop_signal.h. The handler stores one sig_atomic_t and nothing else.
#include "stop_signal.h"
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t received_signal = 0;

static void record_stop_signal(int signal_number) { received_signal = signal_number; }

int goml_stop_signal_install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = record_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;   // blocking calls (MPI, file writes) carry on; the loop checks between steps
    // SIGUSR1 too: mpirun forwards it to every rank and leaves them running, where SIGTERM
    // sent to mpirun kills them a second later (odls_base_sigkill_timeout).
    return sigaction(SIGTERM, &action, NULL) | sigaction(SIGUSR1, &action, NULL);
}

int goml_stop_signal_received(void) { return received_signal; }
