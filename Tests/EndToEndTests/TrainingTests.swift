// Data-parallel training through real mpirun: the same run (losses, gradient norms, final
// parameters) at every world size and over TCP, errors that end the whole job with one clear
// message, and a loss that falls.

import XCTest

final class TrainingTests: XCTestCase {
    func tinyRun(_ out: String, steps: Int = 20) -> [String] {
        ["train", "--config", "tiny", "--batch", "8", "--steps", String(steps), "--eval-every", "0", "--eval-batches", "2",
         "--log-every", "1", "--precision", "fp32", "--data", Harness.corpus, "--out", out]
    }

    func testEveryWorldSizeAndTransportGivesTheSameRun() throws {
        let single = Harness.temporaryDirectory("single")
        Harness.assertSuccess(Harness.goml(tinyRun(single) + ["--single"]), "--single")
        let reference = Harness.losses(single), referenceNorms = Harness.gradNorms(single)
        XCTAssertEqual(reference.count, 20)
        XCTAssertEqual(referenceNorms.count, 20)
        let referenceParams = try Harness.finalParameters(single)
        for (np, transport) in [(1, "shared memory"), (2, "shared memory"), (4, "shared memory"), (2, "tcp")] {
            let out = Harness.temporaryDirectory("np\(np)")
            let mca = transport == "tcp" ? ["--mca", "btl", "self,tcp"] : []
            Harness.assertSuccess(Harness.mpirun(np: np, tinyRun(out), mpiOptions: mca), "np \(np) \(transport)")
            let losses = Harness.losses(out)
            XCTAssertEqual(losses.count, 20, "np \(np) \(transport)")
            XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(losses, reference), 1e-5, "losses, np \(np) \(transport)")
            XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(Harness.gradNorms(out), referenceNorms), 1e-5,
                                     "gradient norms, np \(np) \(transport)")
            let params = try Harness.finalParameters(out)
            XCTAssertEqual(params.count, referenceParams.count)
            XCTAssertLessThanOrEqual(Harness.maxAbsoluteDifference(params, referenceParams), 1e-5, "final parameters, np \(np) \(transport)")
        }
    }

    /// Each error: the documented exit status of the whole job (README's table; 2 for set-up
    /// errors) within the timeout, one message naming the problem.
    func expectFailure(np: Int, _ arguments: [String], message: String, status: Int32 = 2, file: StaticString = #filePath, line: UInt = #line) {
        let r = np == 0 ? Harness.goml(arguments + ["--single"], timeout: 60) : Harness.mpirun(np: np, arguments, timeout: 60)
        XCTAssertFalse(r.timedOut, "hung: \(r.output.suffix(2000))", file: file, line: line)
        XCTAssertEqual(r.status, status, r.output, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(message), "expected '\(message)' in:\n\(r.output.suffix(2000))", file: file, line: line)
        let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
        XCTAssertEqual(errorLines.count, 1, "one error line from the whole job, got:\n\(r.stderr)", file: file, line: line)
    }

    func testBatchNotDivisibleByWorldSize() {
        expectFailure(np: 4, tinyRun(Harness.temporaryDirectory("div")) + ["--batch", "6"], message: "not divisible by the world size 4")
    }

    func testMissingDataFile() {
        expectFailure(np: 2, ["train", "--config", "tiny", "--data", "/nonexistent/input.txt", "--out", Harness.temporaryDirectory("nodata")],
                      message: "/nonexistent/input.txt not found")
    }

    func testDataShorterThanAContext() {
        let dir = Harness.temporaryDirectory("short")
        FileManager.default.createFile(atPath: dir + "/short.txt", contents: Data(String(repeating: "to be or not ", count: 30).utf8))
        expectFailure(np: 2, ["train", "--config", "tiny", "--data", dir + "/short.txt", "--out", dir], message: "validation split has")
    }

    func testInvalidConfig() {
        expectFailure(np: 2, ["train", "--config", "tiny", "--dim", "30", "--data", Harness.corpus, "--out", Harness.temporaryDirectory("cfg")],
                      message: "dim 30 is not divisible by heads 4")
        expectFailure(np: 0, ["train", "--config", "tiny", "--dim", "60", "--data", Harness.corpus, "--out", Harness.temporaryDirectory("cfg2")],
                      message: "head size dim/heads = 15 is odd")
    }

    func testNonFiniteLossStopsEveryRankWithoutACheckpoint() {
        let out = Harness.temporaryDirectory("nan")
        // Step 1 is taken at the initial parameters (finite), recorded and checkpointed; its
        // update blows them up, so step 2's loss is not finite: not recorded, not saved.
        expectFailure(np: 2, tinyRun(out) + ["--lr", "1e38", "--warmup", "0", "--ckpt-every", "1"], message: "non-finite loss at step 2", status: 5)
        XCTAssertEqual(Harness.fieldTexts(out, "step"), ["1"], "only step 1 is recorded")
        let losses = Harness.losses(out)
        XCTAssertEqual(losses.count, 1)
        XCTAssertTrue(losses.allSatisfy(\.isFinite), "a non-finite loss was recorded: \(losses)")
        let checkpoints = ((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []).filter { $0.hasPrefix("ckpt-") }
        XCTAssertEqual(checkpoints.sorted(), ["ckpt-0000001.safetensors", "ckpt-0000001.state.safetensors"], "only step 1 is checkpointed")
    }

    /// The per-step header check: a rank whose options hash or data position differs from rank
    /// 0's is named before the first step, and the job ends with exit 6 (replicas disagree).
    func testHeaderCheckNamesARankWhoseOptionsOrDataPositionDiffer() {
        for (field, what) in [("options", "options/config"), ("data", "data position")] {
            let out = Harness.temporaryDirectory("header-\(field)")
            expectFailure(np: 4, tinyRun(out) + ["--fault-header-rank", "3", "--fault-header-field", field],
                          message: "goml-dist: error: ranks 0 and 3 disagree on the \(what) before step 1; replicas diverged — stopping", status: 6)
            XCTAssertEqual(Harness.losses(out), [], "\(field): a step ran")
        }
    }

    func testLossFalls() {
        let out = Harness.temporaryDirectory("nano300")
        let r = Harness.mpirun(np: 2, ["train", "--config", "nano", "--steps", "300", "--eval-every", "300", "--eval-batches", "50",
                                      "--log-every", "50", "--data", Harness.corpus, "--out", out], timeout: 900)
        Harness.assertSuccess(r, "300 steps of nano")
        let validation = Harness.metrics(out).compactMap { $0["val_loss"] as? Double }
        XCTAssertEqual(validation.count, 1)
        XCTAssertLessThan(validation.last ?? .infinity, 2.5, r.stdout)
    }

    /// The header warns when the ranks on this host would need more memory than it has: two
    /// ranks of tiny, with the host's available memory taken as 1.5 and as 2.5 times one
    /// rank's stated need (so the warning counts both ranks), and as the real MemAvailable.
    func testHeaderWarnsWhenTheHostsRanksNeedMoreMemoryThanIsAvailable() throws {
        func header(_ extra: [String]) -> String {
            let r = Harness.mpirun(np: 2, tinyRun(Harness.temporaryDirectory("memory"), steps: 1) + extra)
            Harness.assertSuccess(r, "memory \(extra)")
            return r.stdout
        }
        let plain = header([])
        XCTAssertFalse(plain.contains("warning:"), plain)
        let line = try XCTUnwrap(plain.split(separator: "\n").first { $0.hasPrefix("memory per rank:") }, plain)
        // parameters, gradients, optimizer state, activations: each "N.N MB".
        let figures = line.split(separator: " ").compactMap { Double($0) }
        XCTAssertEqual(figures.count, 5, String(line))   // the four, and what sharding saved
        let perRankMB = figures.prefix(4).reduce(0, +)
        let tight = header(["--fault-available-memory-mb", String(Int(1.5 * perRankMB))])
        XCTAssertTrue(tight.contains("warning: 2 rank(s) on this host need about"), tight)
        let roomy = header(["--fault-available-memory-mb", String(Int((2.5 * perRankMB).rounded(.up)))])
        XCTAssertFalse(roomy.contains("warning:"), roomy)
    }
}
