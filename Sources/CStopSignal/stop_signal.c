// See stop_signal.h. The handlers store one sig_atomic_t; a second SIGINT soon after the first
// writes one line and exits, both async-signal-safe.
#include "stop_signal.h"
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t received_signal = 0;
static volatile sig_atomic_t sender = 0;
/// Seconds (monotonic) of the first SIGINT; 0 before it.
static volatile sig_atomic_t first_interrupt = 0;

static void record_stop_signal(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    if (signal_number == SIGINT) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (first_interrupt != 0 && now.tv_sec - first_interrupt <= GOML_SECOND_INTERRUPT_SECONDS) {
            static const char message[] =
                "goml-dist: interrupted again: exiting at once, without the stop's checkpoint (the last one written is intact)\n";
            (void)!write(STDERR_FILENO, message, sizeof message - 1);
            _exit(130);
        }
        if (first_interrupt == 0) first_interrupt = (sig_atomic_t)(now.tv_sec > 0 ? now.tv_sec : 1);
    }
    sender = info != NULL ? (sig_atomic_t)info->si_pid : 0;
    received_signal = signal_number;
}

int goml_stop_signal_install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = record_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART | SA_SIGINFO;   // blocking calls (MPI, file writes) carry on; the loop checks between steps
    // SIGUSR1 too: mpirun forwards it to every rank and leaves them running, where SIGTERM
    // sent to mpirun kills them a second later (odls_base_sigkill_timeout). SIGINT: Ctrl-C.
    return sigaction(SIGTERM, &action, NULL) | sigaction(SIGUSR1, &action, NULL) | sigaction(SIGINT, &action, NULL);
}

int goml_stop_signal_received(void) { return received_signal; }

int goml_stop_signal_sender(void) { return sender; }
