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
        func parse<Fault: RawRepresentable>(_ name: String?, _ flag: String) throws -> Fault? where Fault.RawValue == String {
            try name.map { guard let f = Fault(rawValue: $0) else { throw ValidationError("unknown \(flag) '\($0)'") }; return f }
        }
        let dump: ReferenceDump, results: [Comparison], chosen: (precision: Precision, reason: String)
        do {
            chosen = try PrecisionOptions(precision: precision).resolve()
            dump = try ReferenceDump(path: reference)
            results = try dump.compare(gradientFault: faultGradient, precision: chosen.precision, bf16Fault: try parse(faultBF16, "--fault-bf16"),
                                       attentionFault: try parse(faultAttention, "--fault-attention"))
        } catch { fail("\(error)") }
        print("reference \(reference): \(dump.config.summary), batch \(dump.batch)")
        if chosen.precision != .fp32 || precision != "fp32" { print("precision \(chosen.precision.rawValue) (\(chosen.reason))") }
        for r in results { print(r.line) }
        let failed = results.filter { !$0.passed }
        print(failed.isEmpty ? "verify: all \(results.count) quantities within tolerance" : "verify: \(failed.count) of \(results.count) quantities out of tolerance")
        if !failed.isEmpty { throw ExitCode(ExitStatus.failed.code) }
    }
}
