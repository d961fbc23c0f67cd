// Harness: runs the built goml-dist (and mpirun) as a user would, with a timeout, and reads
// what runs leave behind. The binary comes from GOML_DIST_BIN (set by launch/test).

import Foundation
import GomlCore
import GomlIO
import XCTest

enum Harness {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var binary: String {
        ProcessInfo.processInfo.environment["GOML_DIST_BIN"] ?? packageRoot + "/.build/release/goml-dist"
    }
    static var corpus: String { packageRoot + "/data/tinyshakespeare.txt" }
    static var fixtures: String { packageRoot + "/Tests/Fixtures" }
    /// Every reference fixture and the quantities `verify` compares for it (L 2: 83, L 1: 50).
    static let fixtureQuantities = [("tiny_step", 83), ("tiny_clip", 83), ("tiny_noclip", 83), ("tiny_long", 50)]

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        let timedOut: Bool
        let seconds: Double
        var output: String { stdout + stderr }
        /// The end of the output, for failure messages.
        var tail: String { String(output.suffix(3000)) }
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

    /// `body` of every item at once, each on a thread of its own, the results in the items'
    /// order: for runs that mostly wait (errors, timeouts), which would otherwise wait in turn.
    /// Assert on the results afterwards, on the test's thread.
    static func concurrently<T, R>(_ items: [T], _ body: @escaping (T) -> R) -> [R] {
        let slots = ResultSlots<R>(items.count), done = DispatchSemaphore(value: 0)
        for (i, item) in items.enumerated() {
            Thread {
                let result = body(item)
                slots.lock.lock(); slots.results[i] = result; slots.lock.unlock()
                done.signal()
            }.start()
        }
        for _ in items { done.wait() }
        return slots.results.map { $0! }
    }

    /// `concurrently`'s results, each written once by its own thread under the lock.
    final class ResultSlots<R>: @unchecked Sendable {
        let lock = NSLock()
        var results: [R?]
        init(_ count: Int) { results = Array(repeating: nil, count: count) }
    }

    /// A program started in the background (`start`), its stdout and stderr together in one file.
    struct Job {
        let process: Process
        let log: String
        let started: Date

        /// What the job has written so far.
        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// Waits for the exit (ended past `timeout` seconds from now); its output as stdout.
        func wait(timeout: Double) -> Result {
            let timedOut = waitForExit(process, started: Date(), timeout: timeout)
            return Result(status: process.terminationStatus, stdout: output, stderr: "", timedOut: timedOut,
                          seconds: Date().timeIntervalSince(started))
        }
    }

    /// Starts a program in the background, its stdout and stderr together in one file.
    static func start(_ executable: String, _ arguments: [String], environment extra: [String: String] = [:],
                      directory: String? = nil) throws -> Job {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.environment = environment.merging(extra) { $1 }
        let log = temporaryDirectory("job") + "/log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)   // one handle: one file offset for both streams
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? handle?.close()   // the child has its own copy
        return Job(process: process, log: log, started: Date())
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

    /// `train` of tiny as most tests run it: float32 products unless `precision` says otherwise (so
    /// the run is the same whatever bf16 units the CPU has), `evalBatches` validation batches
    /// (every `evalEvery` steps, and at the last), a console line every `logEvery` steps.
    static func tinyTrain(_ out: String, steps: Int = 20, batch: Int = 8, evalEvery: Int = 0, evalBatches: Int = 2, logEvery: Int = 10,
                          precision: String = "fp32", data: [String] = [corpus], extra: [String] = []) -> [String] {
        ["train", "--config", "tiny", "--batch", String(batch), "--steps", String(steps), "--eval-every", String(evalEvery),
         "--eval-batches", String(evalBatches), "--log-every", String(logEvery), "--precision", precision, "--out", out, "--data"] + data + extra
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

    /// The last JSON line `bench` printed.
    static func lastJSON(_ output: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let last = try XCTUnwrap(output.split(separator: "\n").last { $0.hasPrefix("{") }, "no JSON line:\n\(output.suffix(3000))", file: file, line: line)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], String(last), file: file, line: line)
    }

    /// The run in `out` against `reference`: `steps` losses and gradient norms each (and the
    /// validation losses logged), within `tolerance` relative (norms: `normTolerance`), and the
    /// final parameters within `parameterTolerance` of the largest (both default: `tolerance`).
    static func assertClose(_ out: String, _ reference: String, steps: Int, _ what: String, tolerance: Double = 1e-5,
                            normTolerance: Double? = nil, parameterTolerance: Double? = nil,
                            file: StaticString = #filePath, line: UInt = #line) throws {
        for field in ["loss", "grad_norm", "val_loss"] {
            let a = fieldTexts(out, field).compactMap(Double.init), b = fieldTexts(reference, field).compactMap(Double.init)
            if field != "val_loss" { XCTAssertEqual(a.count, steps, "\(what): \(field)", file: file, line: line) }
            XCTAssertEqual(a.count, b.count, "\(what): \(field)", file: file, line: line)
            guard !a.isEmpty else { continue }
            XCTAssertLessThanOrEqual(maxRelativeDifference(a, b), field == "grad_norm" ? normTolerance ?? tolerance : tolerance,
                                     "\(what): \(field)", file: file, line: line)
        }
        let p = try finalParameters(out), q = try finalParameters(reference)
        XCTAssertEqual(p.count, q.count, "\(what): parameter count", file: file, line: line)
        let scale = q.map { abs($0) }.max() ?? 1
        XCTAssertLessThanOrEqual(Double(maxAbsoluteDifference(p, q) / scale), parameterTolerance ?? tolerance, "\(what): parameters",
                                 file: file, line: line)
    }

    /// Asserts the run succeeded, showing its output otherwise.
    static func assertSuccess(_ r: Result, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.timedOut, "\(what) timed out after \(Int(r.seconds)) s\n\(r.output.suffix(3000))", file: file, line: line)
        XCTAssertEqual(r.status, 0, "\(what) failed\n\(r.output.suffix(3000))", file: file, line: line)
    }

    /// Skips the calling test where this CPU (or ONEDNN_MAX_CPU_ISA) has no AVX-512, so no bf16
    /// products, native or emulated: the bf16 path cannot run there, and the rest of the suite must still.
    static func requireBF16Products() throws {
        guard OneDNN.hasBF16Products else {
            throw XCTSkip("needs AVX-512 for bf16 products (native or emulated); oneDNN reports \(OneDNN.isaName) on this CPU")
        }
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
