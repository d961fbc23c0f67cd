// The CPU floor the Swift code is built for (Package.swift: AVX2 and FMA on x86-64). A
// constructor in cpu_floor.c checks it before main, so a CPU below it gets one line and exit
// status 2 instead of an illegal instruction somewhere later. Nothing is declared here:
// SwiftPM links every object file of the executable's C targets, so nothing needs to refer to
// the check for it to run.
#ifndef GOML_CPU_FLOOR_H
#define GOML_CPU_FLOOR_H
#endif
