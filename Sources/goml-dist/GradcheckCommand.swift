// `goml-dist gradcheck`: runs GomlCore's finite-difference check for each FFN kind and
// fails past a stated tolerance.

import ArgumentParser
import Foundation
import GomlCore
import GomlTrain
import GomlComm

struct GradcheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gradcheck",
        abstract: "Finite-difference check of every parameter's analytic gradient on a small random model.")

    @Option(help: "FFN kinds to check: swiglu, gelu or all.")
    var ffn: String = "all"

    @Option(help: "Fail when any tensor's worst relative error exceeds this.")
    var tolerance: Double = GradientCheck.tolerance

    @Option(help: "Seed of the random model and batch.")
    var seed: UInt64 = 7

    @Option(name: .customLong("fault-backward"), help: ArgumentHelp("Break one backward kernel (layernorm-weight, attention-diagonal): shows that gradcheck catches a wrong backward.", visibility: .hidden))
    var faultBackward: String?

    func run() throws {
        guard let kinds = ffn == "all" ? FFNKind.allCases : FFNKind(rawValue: ffn).map({ [$0] }) else { fail("unknown --ffn '\(ffn)': use swiglu, gelu or all") }
        let fault = faultBackward.map { name in
            guard let known = BackwardFault(rawValue: name) else {
                fail("unknown --fault-backward '\(name)': use \(BackwardFault.allCases.map(\.rawValue).joined(separator: " or "))")
            }
            return known
        }
        let report = GradientCheck.report(kinds: kinds, seed: seed, tolerance: tolerance, backwardFault: fault)
        report.lines.forEach { print($0) }
        if !report.passed { throw ExitCode(ExitStatus.failed.code) }
    }
}
