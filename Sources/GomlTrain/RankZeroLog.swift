// RankZeroLog: console lines and OUT/metrics.jsonl, written by rank 0 only (silent elsewhere).
// On a terminal, steps between logged lines show as one live progress line with an ETA.

import Foundation
import GomlComm
import GomlCore

public final class RankZeroLog {
    let isRoot: Bool
    private let metricsFile: FileHandle?
    private let interactive: Bool
    private var progressShown = false

    /// Opens OUT/metrics.jsonl: fresh for a new run; for a resumed one, records after the
    /// resumed step are dropped so the file reads as if the run had never stopped.
    init(isRoot: Bool, directory: String, resumeStep: Int?, progress: Bool?) throws {
        self.isRoot = isRoot
        interactive = isRoot && (progress ?? Self.outputIsTerminal)
        guard isRoot else { metricsFile = nil; return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw RunFailure(message: "cannot create output directory \(directory): \(error.localizedDescription)", code: ExitStatus.setup.code)
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
            throw RunFailure(message: "cannot write \(path): check that the output directory is writable", code: ExitStatus.setup.code)
        }
        handle.seekToEndOfFile()
        metricsFile = handle
    }

    /// Whether the user's output is a terminal. Under mpirun a rank's stdout is mpirun's pipe
    /// or pseudo-terminal whatever the user's is, so a rank started by a local mpirun asks
    /// what its parent's stdout is; remote ranks (parent: the MPI daemon) print plain lines.
    static var outputIsTerminal: Bool {
        guard ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil else { return isatty(1) == 1 }
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(getppid())/fd/1"),
              let parent = try? String(contentsOfFile: "/proc/\(getppid())/comm", encoding: .utf8),
              parent.hasPrefix("mpirun") || parent.hasPrefix("mpiexec") || parent.hasPrefix("orterun") else { return false }
        return target.hasPrefix("/dev/pts/") || target.hasPrefix("/dev/tty")
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
        let mfu = ProductPeak.utilization(modelGFLOPS: tokensPerSecond * o.model.flopsPerToken / 1e9, peakGFLOPS: peakGFLOPS)
        let text = String(format: "step %6d/%d | loss %.4f | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s | ",
                          r.step, o.steps, r.loss, r.lr, r.gradNorm, r.timings.total * 1000, tokensPerSecond) + ProductPeak.describe(mfu)
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
