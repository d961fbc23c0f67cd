// CCorpusGuard: turns a read past the end of a data file that shrank under its memory map
// (SIGBUS) into one clear error line and an exit code, instead of a crash.
#ifndef GOML_CORPUS_GUARD_H
#define GOML_CORPUS_GUARD_H

#include <stddef.h>

/// Guards [base, base + length) as the mapping of file `name`. Call before any thread reads
/// the mapping (registration is not synchronised with the handler). Returns 0, or -1 when
/// out of memory.
int goml_corpus_guard(const void *base, size_t length, const char *name);

/// Forgets the mapping that starts at `base` (before it is unmapped).
void goml_corpus_unguard(const void *base);

/// `prefix` starts the error line (e.g. "rank 1 on host2: "); `code` is the exit status.
void goml_corpus_guard_configure(const char *prefix, int code);

#endif
