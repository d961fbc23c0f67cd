// goml-dist: the command-line entry point. Parses options and calls the libraries; no maths here.

import ArgumentParser
import Foundation
import GomlTrain
import GomlComm

@main
struct GomlDist: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "goml-dist",
        abstract: "Data-parallel trainer for byte-level LLaMA-style language models on CPUs over MPI.",
        subcommands: [TrainCommand.self, SampleCommand.self, PlotCommand.self, BenchCommand.self, VerifyCommand.self, GradcheckCommand.self,
                      ExitCodesCommand.self])
}

/// Prints `message` as one line on stderr and exits with `code`.
func fail(_ message: String, code: Int32 = ExitStatus.failed.code) -> Never {
    FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8))
    exit(code)
}
