// A stop request by signal (SIGTERM: what Slurm and most schedulers send before SIGKILL;
// SIGINT: Ctrl-C; SIGUSR1: what mpirun forwards to the ranks without killing them),
// recorded by a handler that only stores the signal number (async-signal-safe); the training
// loop polls it between steps, checkpoints and stops. A second SIGINT within
// GOML_SECOND_INTERRUPT_SECONDS of the first exits at once (status 130), saying so.
#ifndef GOML_STOP_SIGNAL_H
#define GOML_STOP_SIGNAL_H

#define GOML_SECOND_INTERRUPT_SECONDS 5

/// Installs the handler for SIGTERM, SIGINT and SIGUSR1. Returns 0, or -1 when sigaction fails.
int goml_stop_signal_install(void);

/// The signal that asked this process to stop, or 0 when none has arrived.
int goml_stop_signal_received(void);

/// The process that sent that signal (0 when unknown, as for a signal from the kernel).
int goml_stop_signal_sender(void);

#endif
