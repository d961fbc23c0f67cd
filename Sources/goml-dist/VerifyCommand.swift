// `goml-dist verify`: recomputes a PyTorch reference dump with GomlIO's ReferenceDump and
// prints one line per compared quantity; exit 1 when any is out of tolerance.

import ArgumentParser
import GomlCore
import GomlIO

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Recompute a PyTorch reference dump and compare logits, loss, gradients and two AdamW steps.")

    @Option(name: .long, help: "A reference dump (safetensors, fixtures/README.md layout).")
    var reference: String

    @Option(name: .long, help: ArgumentHelp("Scale this tensor's gradient by 1.01 before comparing (shows that verify catches a wrong gradient).", visibility: .hidden))
    var faultGradient: String?

    func run() throws {
        let dump: ReferenceDump
        let results: [Comparison]
        do {
            dump = try ReferenceDump(path: reference)
            results = try dump.compare(gradientFault: faultGradient)
        } catch { fail("\(error)") }
        print("reference \(reference): \(dump.config.summary), batch \(dump.batch)")
        for r in results { print(r.line) }
        let failed = results.filter { !$0.passed }
        if failed.isEmpty {
            print("verify: all \(results.count) quantities within tolerance")
        } else {
            print("verify: \(failed.count) of \(results.count) quantities out of tolerance")
            throw ExitCode(1)
        }
    }
}
