// `goml-dist verify`: recomputes a PyTorch reference dump with GomlIO's ReferenceDump and
// prints one line per compared quantity; exit 1 when any is out of tolerance.

import ArgumentParser
import GomlCore
import GomlIO
import GomlTrain
import GomlComm

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Recompute a PyTorch reference dump and compare logits, loss, gradients and two AdamW steps.")

    @Option(name: .long, help: "A reference dump (safetensors, fixtures/README.md layout).")
    var reference: String

    @Option(name: .long, help: ArgumentHelp("Scale this tensor's gradient by 1.01 before comparing (shows that verify catches a wrong gradient).", visibility: .hidden))
    var faultGradient: String?

    @Option(help: "Matrix products: fp32 (the default: the float32 reference check), bf16 (bf16 tolerances, README \"Precision\") or auto.")
    var precision: String = "fp32"

    @Option(name: .customLong("fault-bf16"), help: ArgumentHelp("Break the bf16 path (wrong-leading-dimension): shows that verify --precision bf16 catches it.", visibility: .hidden))
    var faultBF16: String?

    @Option(name: .customLong("fault-attention"), help: ArgumentHelp("Break attention's backward (skip-diagonal-block): shows that verify catches it.", visibility: .hidden))
    var faultAttention: String?

    func run() throws {
        let dump: ReferenceDump
        let results: [Comparison]
        let chosen: (precision: Precision, reason: String)
        do {
            chosen = try PrecisionOptions(precision: precision).resolve()
            let fault = try faultBF16.map { name in
                guard let f = BF16Fault(rawValue: name) else { throw ValidationError("unknown --fault-bf16 '\(name)'") }
                return f
            }
            let attentionFault = try faultAttention.map { name in
                guard let f = AttentionFault(rawValue: name) else { throw ValidationError("unknown --fault-attention '\(name)'") }
                return f
            }
            dump = try ReferenceDump(path: reference)
            results = try dump.compare(gradientFault: faultGradient, precision: chosen.precision, bf16Fault: fault,
                                       attentionFault: attentionFault)
        } catch { fail("\(error)") }
        print("reference \(reference): \(dump.config.summary), batch \(dump.batch)")
        if chosen.precision != .fp32 || precision != "fp32" { print("precision \(chosen.precision.rawValue) (\(chosen.reason))") }
        for r in results { print(r.line) }
        let failed = results.filter { !$0.passed }
        if failed.isEmpty {
            print("verify: all \(results.count) quantities within tolerance")
        } else {
            print("verify: \(failed.count) of \(results.count) quantities out of tolerance")
            throw ExitCode(ExitStatus.failed.code)
        }
    }
}
