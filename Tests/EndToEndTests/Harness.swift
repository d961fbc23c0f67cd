// Harness: runs the built goml-dist (and mpirun) as a user would, with a timeout, and reads
// what runs leave behind. The binary comes from GOML_DIST_BIN (set by launch/test).

import Foundation
import GomlIO
import XCTest

enum Harness {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var binary: String {
        ProcessInfo.processInfo.environment["GOML_DIST_BIN"] ?? packageRoot + "/.build/release/goml-dist"
    }
    static var corpus: String { packageRoot + "/data/tinyshakespeare.txt" }
    static var fixtures: String { packageRoot + "/Tests/Fixtures" }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        let timedOut: Bool
        let seconds: Double
        var output: String { stdout + stderr }
    }

    /// Environment for child processes: mpirun may run as root here; tests keep the AVX2 kernels.
    static var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        env["OPENBLAS_CORETYPE"] = env["OPENBLAS_CORETYPE"] ?? "Haswell"
        return env
    }

    /// Runs a program to completion or until `timeout` seconds, then kills it.
    static func run(_ executable: String, _ arguments: [String], timeout: Double = 300,
                    environment extra: [String: String] = [:], directory: String? = nil) -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.arguments = arguments
        process.environment = environment.merging(extra) { $1 }
        let dir = temporaryDirectory("proc")
        let outPath = dir + "/stdout", errPath = dir + "/stderr"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        do { try process.run() } catch {
            return Result(status: -1, stdout: "", stderr: "cannot start \(executable): \(error)", timedOut: false, seconds: 0)
        }
        let timedOut = waitForExit(process, started: start, timeout: timeout)
        // Generated text may hold any bytes: decode leniently.
        let out = String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self)
        let err = String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self)
        return Result(status: process.terminationStatus, stdout: out, stderr: err, timedOut: timedOut,
                      seconds: Date().timeIntervalSince(start))
    }

    /// Waits for `process` to end; past `timeout` seconds from `started`, ends it (TERM, then
    /// KILL). Returns whether it timed out.
    static func waitForExit(_ process: Process, started: Date, timeout: Double) -> Bool {
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(started) > timeout {
                timedOut = true
                process.terminate()
                Thread.sleep(forTimeInterval: 2)
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        process.waitUntilExit()
        return timedOut
    }

    static func goml(_ arguments: [String], timeout: Double = 300) -> Result {
        run(binary, arguments, timeout: timeout)
    }

    static let mpirunOptions = ["--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]

    /// `mpirun -np N goml-dist ARGS` (oversubscribed; the machine has 2 cores).
    static func mpirun(np: Int, _ arguments: [String], mpiOptions: [String] = [], timeout: Double = 300) -> Result {
        run("/usr/bin/mpirun", ["-np", String(np)] + mpirunOptions + mpiOptions + [binary] + arguments, timeout: timeout)
    }

    static func temporaryDirectory(_ name: String) -> String {
        let path = NSTemporaryDirectory() + "goml-test-\(name)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The JSON records of OUT/metrics.jsonl.
    static func metrics(_ outDirectory: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: outDirectory + "/metrics.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// The values of `field` in OUT/metrics.jsonl as written (the exact decimal text, for
    /// byte-level comparisons), from the records that have it.
    static func fieldTexts(_ outDirectory: String, _ field: String) -> [String] {
        guard let text = try? String(contentsOfFile: outDirectory + "/metrics.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let r = line.range(of: "\"\(field)\":") else { return nil }
            return String(line[r.upperBound...].prefix { $0 != "," && $0 != "}" })
        }
    }

    static func lossTexts(_ outDirectory: String) -> [String] { fieldTexts(outDirectory, "loss") }

    static func losses(_ outDirectory: String) -> [Double] { lossTexts(outDirectory).compactMap(Double.init) }

    /// Per-step gradient norms (after the reduction, before clipping). Runs that should be the
    /// same must agree on these too: clipping and AdamW's m/√v hide a gradient scaled uniformly
    /// (summed over ranks instead of averaged) from the losses and parameters.
    static func gradNorms(_ outDirectory: String) -> [Double] { fieldTexts(outDirectory, "grad_norm").compactMap(Double.init) }

    /// Parameters of the checkpoint `latest` names in OUT.
    static func finalParameters(_ outDirectory: String) throws -> [Float] {
        try Checkpoint.loadModel(Checkpoint.resolve(outDirectory)).params
    }

    /// The bytes of the tensors (data area) of the latest checkpoint's model file.
    static func checkpointTensorBytes(_ outDirectory: String) throws -> [UInt8] {
        let path = try Checkpoint.resolve(outDirectory)
        let file = try SafetensorsFile(path: path)
        return try file.names.flatMap { Array(try file.rawBytes($0)) }
    }

    /// Asserts the run succeeded, showing its output otherwise.
    static func assertSuccess(_ r: Result, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.timedOut, "\(what) timed out after \(Int(r.seconds)) s\n\(r.output.suffix(3000))", file: file, line: line)
        XCTAssertEqual(r.status, 0, "\(what) failed\n\(r.output.suffix(3000))", file: file, line: line)
    }

    /// Largest |a − b| / |b| element by element; ∞ (failing any bound) when the counts differ
    /// or there is nothing to compare, so a missing step is never a match.
    static func maxRelativeDifference(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-30) }.max() ?? .infinity
    }

    /// Largest |a − b| element by element; ∞ when the counts differ or both are empty.
    static func maxAbsoluteDifference(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
    }
}
