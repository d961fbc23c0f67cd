// goml-dist: the command-line entry point. Parses options and calls the libraries; no maths here.

import ArgumentParser
import Foundation
import GomlCore
import GomlTrain
import GomlComm

@main
struct GomlDist: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "goml-dist",
        abstract: "Data-parallel trainer for byte-level LLaMA-style language models on CPUs over MPI.",
        version: "goml-dist \(version) (commit \(buildCommit))",
        subcommands: [TrainCommand.self, SampleCommand.self, PlotCommand.self, BenchCommand.self, PlanCommand.self, VerifyCommand.self, GradcheckCommand.self,
                      ExitCodesCommand.self])

    static let version = "0.1"

    static func main() {
        if let core = BLAS.coreTypeToRestartWith {
            setenv("OPENBLAS_CORETYPE", core, 1)
            execv("/proc/self/exe", CommandLine.unsafeArgv)   // returns only if it fails: then run as we are
        }
        main(nil)
    }

    /// The commit the launch scripts built this binary from: they write it beside the binary
    /// (BINARY.commit), since SwiftPM has no way to stamp it in without rebuilding every target.
    static var buildCommit: String {
        let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let text = (try? String(contentsOfFile: binary + ".commit", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return text.flatMap { $0.isEmpty ? nil : $0 } ?? "unknown: built without launch/"
    }
}

/// Prints `message` as one line on stderr and exits with `code`.
func fail(_ message: String, code: Int32 = ExitStatus.failed.code) -> Never {
    FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8))
    exit(code)
}
