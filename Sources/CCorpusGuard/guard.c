// CCorpusGuard: a SIGBUS handler for the corpus's memory maps. A file truncated while it is
// mapped makes reads past its new end fault with SIGBUS; inside a guarded mapping the handler
// writes one line naming the file and ends the process (mpirun then ends the job). A SIGBUS
// anywhere else goes to the action installed before ours. Only async-signal-safe calls in the handler.
#define _GNU_SOURCE
#include "CCorpusGuard.h"
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct guarded { const char *base; size_t length; char *name; };

static struct guarded *table;
static size_t used, capacity;
static char prefix[512];
static int exit_code = 8;        /* ExitStatus.dataShrank; goml-dist configures it from that table */
static int installed;
static struct sigaction previous;   /* the handler before ours (e.g. the runtime's backtracer) */

static void say(const char *text) {
    size_t n = strlen(text);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, text, n);
        if (w <= 0) return;
        text += w; n -= (size_t)w;
    }
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    const char *address = info ? (const char *)info->si_addr : NULL;
    for (size_t i = 0; i < used; i++) {
        if (address >= table[i].base && address < table[i].base + table[i].length) {
            say("goml-dist: error: ");
            say(prefix);
            say("data file ");
            say(table[i].name);
            say(" shrank while training (a read past its new end); restore the file, then continue with --resume\n");
            _exit(exit_code);
        }
    }
    /* Not ours: the previous action takes over when the faulting access repeats on return. */
    sigaction(sig, &previous, NULL);
}

int goml_corpus_guard(const void *base, size_t length, const char *name) {
    if (used == capacity) {
        size_t grown = capacity ? capacity * 2 : 16;
        struct guarded *bigger = realloc(table, grown * sizeof *bigger);
        if (!bigger) return -1;
        table = bigger; capacity = grown;
    }
    char *copy = strdup(name);
    if (!copy) return -1;
    table[used++] = (struct guarded){ base, length, copy };
    if (!installed) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &previous) != 0) return -1;
        installed = 1;
    }
    return 0;
}

void goml_corpus_unguard(const void *base) {
    for (size_t i = 0; i < used; i++) {
        if (table[i].base == base) {
            free(table[i].name);
            table[i] = table[--used];
            return;
        }
    }
}

void goml_corpus_guard_configure(const char *text, int code) {
    strncpy(prefix, text ? text : "", sizeof prefix - 1);
    prefix[sizeof prefix - 1] = 0;
    exit_code = code;
}
