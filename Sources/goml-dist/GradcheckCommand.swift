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
        let kinds: [FFNKind]
        if ffn == "all" { kinds = FFNKind.allCases } else if let k = FFNKind(rawValue: ffn) { kinds = [k] } else {
            fail("unknown --ffn '\(ffn)': use swiglu, gelu or all")
        }
        var fault: BackwardFault?
        if let name = faultBackward {
            guard let known = BackwardFault(rawValue: name) else {
                fail("unknown --fault-backward '\(name)': use \(BackwardFault.allCases.map(\.rawValue).joined(separator: " or "))")
            }
            fault = known
        }
        var worstOverall = 0.0
        for kind in kinds {
            let config = GradientCheck.smallConfig(kind)
            print("gradcheck \(config.summary), batch 2, central differences")
            for r in GradientCheck.run(config: config, seed: seed, backwardFault: fault) {
                worstOverall = max(worstOverall, r.worstRelativeError)
                let flag = r.worstRelativeError <= tolerance ? "ok" : "FAIL"
                print("  \(r.tensor.padding(toLength: 36, withPad: " ", startingAt: 0)) worst rel err \(String(format: "%.2e", r.worstRelativeError)) over \(r.probes) probes  \(flag)")
            }
        }
        print("gradcheck: worst relative error \(String(format: "%.2e", worstOverall)), tolerance \(tolerance)")
        if worstOverall > tolerance || worstOverall.isNaN { throw ExitCode(ExitStatus.failed.code) }
    }
}
