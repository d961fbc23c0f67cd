// RankZeroLog: console lines and OUT/metrics.jsonl, written by rank 0 only (silent elsewhere).
// On a terminal, steps between logged lines show as one live progress line with an ETA.

import Foundation
import GomlCore

public final class RankZeroLog {
    let isRoot: Bool
    private let metricsFile: FileHandle?
    private let interactive: Bool
    private var progressShown = false

    /// Opens OUT/metrics.jsonl: fresh for a new run; for a resumed one, records after the
    /// resumed step are dropped so the file reads as if the run had never stopped.
    init(isRoot: Bool, directory: String, resumeStep: Int?, forceProgress: Bool) throws {
        self.isRoot = isRoot
        // Under mpirun stdout is a pseudo-terminal even when the job's output goes to a file,
        // so there the launcher decides (--progress).
        interactive = isRoot && (forceProgress || (isatty(1) == 1 && ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] == nil))
        guard isRoot else { metricsFile = nil; return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw RunFailure(message: "cannot create output directory \(directory): \(error.localizedDescription)", code: 2)
        }
        let path = directory + "/metrics.jsonl"
        var kept = ""
        if let resumeStep, let old = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                if let range = line.range(of: "\"step\":"), let step = Int(line[range.upperBound...].prefix { $0.isNumber }), step <= resumeStep {
                    kept += line + "\n"
                }
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(kept.utf8)), let handle = FileHandle(forWritingAtPath: path) else {
            throw RunFailure(message: "cannot write \(path): check that the output directory is writable", code: 2)
        }
        handle.seekToEndOfFile()
        metricsFile = handle
    }

    func line(_ text: String) {
        guard isRoot else { return }
        if progressShown { print("\r\u{1B}[K", terminator: ""); progressShown = false }
        print(text)
    }

    func metrics(_ fields: [(String, String)]) {
        guard let metricsFile else { return }
        let body = fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",")
        metricsFile.write(Data("{\(body)}\n".utf8))
    }

    func step(_ r: StepResult, of o: TrainingOptions, tokensPerStep: Int, peakGFLOPS: Double, elapsed: Double, force: Bool) {
        guard isRoot else { return }
        let tokensPerSecond = Double(tokensPerStep) / r.timings.total
        let mfu = peakGFLOPS > 0 ? tokensPerSecond * o.model.flopsPerToken / (peakGFLOPS * 1e9) : 0
        let text = String(format: "step %6d/%d | loss %.4f | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s | MFU %.1f%%",
                          r.step, o.steps, r.loss, r.lr, r.gradNorm, r.timings.total * 1000, tokensPerSecond, mfu * 100)
        if force || !interactive {
            if force { line(text) }
        } else {
            let eta = elapsed / Double(r.step) * Double(o.steps - r.step)
            print("\r\u{1B}[K" + text + String(format: " | ETA %.0f s", eta), terminator: "")
            fflush(stdout)
            progressShown = true
        }
    }
}
