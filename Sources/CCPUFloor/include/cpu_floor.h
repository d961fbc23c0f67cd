// The CPU floor the Swift code is built for (Package.swift: AVX2 and FMA on x86-64). A
// constructor checks it before main, so a CPU below it gets one line and exit status 2 instead
// of an illegal instruction somewhere later.
#ifndef GOML_CPU_FLOOR_H
#define GOML_CPU_FLOOR_H

/// 1 once the check passed; read by main so that the linker keeps the check.
extern const int goml_cpu_floor_checked;

#endif
