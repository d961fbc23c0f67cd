// `goml-dist exit-codes` (hidden): GomlTrain's table of exit statuses as shell assignments,
// which launch/train evaluates instead of repeating the codes.

import ArgumentParser
import GomlTrain
import GomlComm

struct ExitCodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exit-codes",
        abstract: "Print the exit statuses as NAME=CODE lines for launch scripts.",
        shouldDisplay: false)

    func run() {
        for status in ExitStatus.allCases {
            print("\(status.shellName)=\(status.code)  # \(status.meaning)")
        }
        let final = ExitStatus.allCases.filter { !$0.relaunch }.map { String($0.code) }
        print("EXIT_NO_RELAUNCH=\"\(final.joined(separator: " "))\"  # launch/train does not relaunch these")
    }
}
