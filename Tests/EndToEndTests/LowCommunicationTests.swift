// Low-communication training (DiLoCo, --sync-every) through real mpirun: workers drift apart
// between syncs and agree right after, Δ as bf16 halves the bytes, a worker that keeps its
// parameters stops the job, and bad layouts or options are one-line errors. (One worker as
// synchronous training, the outer Nesterov step blocking and overlapped, and resumption bit for
// bit are StrategyTableTests, in one process; StopSignalTests resumes one under mpirun.)

import Foundation
import XCTest

final class LowCommunicationTests: XCTestCase {
    func values(_ out: String, _ field: String) -> [Double] { Harness.fieldTexts(out, field).compactMap(Double.init) }

    /// Two workers of two ranks each (sharded inside), checksums after every step: the
    /// workers' parameters differ between syncs (their own data) and are equal right after one.
    func testWorkersDivergeBetweenSyncsAndAgreeAfter() throws {
        let out = Harness.temporaryDirectory("diloco-diverge")
        let r = Harness.mpirun(np: 4, Harness.tinyTrain(out, steps: 12, extra: ["--sync-every", "4", "--worker-size", "2", "--checksum-every", "1",
                                                                      "--outer-lr", "0.8", "--outer-momentum", "0.5"]))
        Harness.assertSuccess(r, "two workers")
        XCTAssertTrue(r.stdout.contains("mode diloco: 2 worker(s) × 2 rank(s), sync every 4 steps"), r.stdout)
        // The header prints the clip the workers' optimizers were given: --grad-clip 1 × √2.
        XCTAssertTrue(r.stdout.contains("each worker clips its gradient norm at 1.41421: --grad-clip × √2"), r.stdout)
        let records = Harness.metrics(out).filter { $0["step"] != nil }
        XCTAssertEqual(records.count, 12)
        for record in records {
            let step = record["step"] as? Int ?? 0
            let sums = record["worker_checksums"] as? [String] ?? []
            XCTAssertEqual(sums.count, 2, "step \(step)")
            if step % 4 == 0 {
                XCTAssertEqual(sums.first, sums.last, "workers disagree right after the sync at step \(step)")
                XCTAssertEqual(record["outer_bytes"] as? Int, 4 * 132_224, "step \(step)")
            } else {
                XCTAssertNotEqual(sums.first, sums.last, "workers did not diverge at step \(step)")
                XCTAssertNil(record["outer_bytes"], "no outer step at step \(step)")
            }
        }
    }

    /// Δ as bfloat16 on the wire: half the bytes per outer step, every worker restarts from the
    /// same θ_global (the run's own check, every sync), and the model is float32's to bf16
    /// rounding, not equal to it (so the sum really travelled as bf16).
    func testBF16PseudoGradientHalvesTheBytes() throws {
        let float32 = Harness.temporaryDirectory("diloco-f32"), bf16 = Harness.temporaryDirectory("diloco-bf16")
        let options = ["--sync-every", "4", "--worker-size", "1", "--checksum-every", "4"]
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(float32, extra: options)), "float32 Δ")
        let r = Harness.mpirun(np: 2, Harness.tinyTrain(bf16, extra: options + ["--outer-compression", "bf16"]))
        Harness.assertSuccess(r, "bf16 Δ")
        XCTAssertTrue(r.stdout.contains("Δ bf16 on the wire: 0.26 MB per rank per outer step"), r.stdout)
        XCTAssertEqual(values(bf16, "outer_bytes"), Array(repeating: 2 * 132_224, count: 5))
        let p = try Harness.finalParameters(bf16), q = try Harness.finalParameters(float32)
        let difference = Double(Harness.maxAbsoluteDifference(p, q) / (q.map { abs($0) }.max() ?? 1))
        XCTAssertGreaterThan(difference, 0, "bf16 Δ gave float32's parameters bit for bit")
        XCTAssertLessThanOrEqual(difference, 1e-2, "bf16 Δ strayed from float32's")
    }

    /// The run's own check: a worker that does not restart from θ_global after an outer step
    /// (hidden fault) stops the job with one line naming the workers.
    func testWorkerThatKeepsItsParametersAfterASyncStopsTheJob() {
        let out = Harness.temporaryDirectory("diloco-no-restart")
        let r = Harness.mpirun(np: 2, Harness.tinyTrain(out, steps: 8, extra: ["--sync-every", "4", "--worker-size", "1", "--checksum-every", "4",
                                                                     "--fault-outer-no-restart"]))
        XCTAssertNotEqual(r.status, 0, r.output)
        let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
        XCTAssertEqual(errorLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("workers 0 and 1 hold different parameters right after the outer step at step 4"), r.stderr)
    }

    /// Each bad option or layout: one error line naming it, non-zero exit, no training.
    func testBadOptionsAreOneLineErrors() {
        let cases: [(np: Int, extra: [String], expected: String)] = [
            (1, ["--sync-every", "0"], "--sync-every is 0; it must be a positive integer"),
            (2, ["--sync-every", "4", "--worker-size", "3"], "--worker-size 3 does not divide the 2 ranks"),
            (2, ["--sync-every", "4", "--workers-per-host", "3"], "--workers-per-host 3 does not divide the ranks on every host"),
            (2, ["--sync-every", "4", "--reduction", "exact"], "--reduction exact cannot run with --sync-every 4"),
            (1, ["--sync-every", "4", "--outer-momentum", "1"], "--outer-momentum is 1.0; it must lie in [0, 1)"),
        ]
        // At once: each job mostly waits for mpirun to end it.
        let results = Harness.concurrently(cases) { c in
            Harness.mpirun(np: c.np, Harness.tinyTrain(Harness.temporaryDirectory("diloco-bad"), steps: 4, logEvery: 1, extra: c.extra), timeout: 60)
        }
        for ((_, extra, expected), r) in zip(cases, results) {
            XCTAssertFalse(r.timedOut, "\(extra)")
            XCTAssertNotEqual(r.status, 0, "\(extra): \(r.output)")
            let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
            XCTAssertEqual(errorLines.count, 1, "\(extra): one error line from the whole job, got:\n\(r.stderr)")
            XCTAssertTrue(r.stderr.contains(expected), "\(extra): \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("step      1"), "\(extra) trained: \(r.stdout)")
        }
    }
}
