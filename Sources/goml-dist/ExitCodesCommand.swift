// `goml-dist exit-codes` (hidden): GomlTrain's table of exit statuses as shell assignments,
// which launch/train evaluates instead of repeating the codes.

import ArgumentParser
import GomlComm

struct ExitCodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exit-codes",
        abstract: "Print the exit statuses as NAME=CODE lines for launch scripts.",
        shouldDisplay: false)

    func run() { ExitStatus.shellAssignments.forEach { print($0) } }
}
