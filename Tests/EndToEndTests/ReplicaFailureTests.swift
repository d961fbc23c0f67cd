// A replica that goes wrong during a run, by drifting from the others or by no longer
// responding, ends the whole job with a message naming it instead of training on or hanging.

import Foundation
import XCTest

final class ReplicaFailureTests: XCTestCase {
    /// A replica that drifts from the others is caught at the next parameter checksum, naming
    /// the ranks and the step, and the whole job stops. Replicated (--no-shard): sharded ranks
    /// all-gather every parameter each step, so there a drifted value is overwritten.
    func testADivergedReplicaStopsTheJob() {
        let out = Harness.temporaryDirectory("diverge")
        let r = Harness.mpirun(np: 4, ["train", "--config", "tiny", "--steps", "30", "--eval-every", "0", "--checksum-every", "5",
                                      "--fault-diverge-rank", "2", "--no-shard", "--data", Harness.corpus, "--out", out], timeout: 120)
        XCTAssertFalse(r.timedOut)
        XCTAssertEqual(r.status, 6, r.output)
        XCTAssertTrue(r.stderr.contains("ranks 0 and 2 disagree on the parameter checksum before step 6"), r.output)
        XCTAssertEqual(Harness.losses(out).count, 5, "stopped at the first check after the divergence")
    }

    /// Sharded: a rank lost during the all-gather (it starts none and stops responding) leaves
    /// the other's next forward waiting for a parameter bucket; that wait is watched, so the job
    /// ends with the timeout message naming the all-gather instead of a hang.
    func testARankLostDuringTheAllGatherEndsTheJobAfterTheTimeout() {
        let out = Harness.temporaryDirectory("lost-gather")
        let r = Harness.mpirun(np: 2, ["train", "--config", "tiny", "--steps", "20", "--eval-every", "0", "--collective-timeout", "8",
                                      "--fault-lost-gather-rank", "1", "--data", Harness.corpus, "--out", out], timeout: 90)
        XCTAssertFalse(r.timedOut, "the job hung with rank 1 lost during the all-gather\n\(r.output)")
        XCTAssertEqual(r.status, 4, r.output)
        XCTAssertTrue(r.stderr.contains("rank 0 (") && r.stderr.contains("waited 8 s in MPI_Allgatherv (updated parameter buckets) at step 2 without progress"),
                      r.output)
    }

    /// DiLoCo: a rank lost during the outer all-reduce (it starts none and stops responding)
    /// leaves the other worker waiting for the pseudo-gradient's sum; that wait is watched, so
    /// the job ends with the timeout message naming it. Overlapped, the other worker goes on
    /// into the next step and waits in its first collective instead: the same end, named so.
    func testARankLostDuringTheOuterAllReduceEndsTheJobAfterTheTimeout() {
        for (extra, call) in [([], "MPI_Iallreduce (DiLoCo's outer pseudo-gradient)"), (["--overlap-outer"], "MPI_Allgather")] {
            let out = Harness.temporaryDirectory("lost-outer")
            let r = Harness.mpirun(np: 2, ["train", "--config", "tiny", "--steps", "20", "--eval-every", "0", "--collective-timeout", "8",
                                          "--sync-every", "2", "--worker-size", "1", "--fault-lost-outer-rank", "1",
                                          "--data", Harness.corpus, "--out", out] + extra, timeout: 90)
            XCTAssertFalse(r.timedOut, "\(extra): the job hung with rank 1 lost during the outer all-reduce\n\(r.output)")
            XCTAssertEqual(r.status, 4, "\(extra)\n\(r.output)")
            XCTAssertTrue(r.stderr.contains("rank 0 (") && r.stderr.contains("waited 8 s in \(call) at step"),
                          "\(extra)\n\(r.output)")
        }
    }

    /// A rank that stops responding (SIGSTOP) ends the job with the timeout message instead of a hang.
    func testAStoppedRankEndsTheJobAfterTheTimeout() throws {
        let out = Harness.temporaryDirectory("sigstop")
        let timeout = 8.0
        let job = Process()
        job.executableURL = URL(fileURLWithPath: "/usr/bin/mpirun")
        job.arguments = ["-np", "2"] + Harness.mpirunOptions + [Harness.binary, "train", "--config", "tiny", "--steps", "1000000",
                         "--eval-every", "0", "--log-every", "100000", "--collective-timeout", String(Int(timeout)),
                         "--data", Harness.corpus, "--out", out]
        job.environment = Harness.environment
        let errPath = out + "-stderr"
        FileManager.default.createFile(atPath: errPath, contents: nil)
        job.standardOutput = FileHandle.nullDevice
        job.standardError = FileHandle(forWritingAtPath: errPath)
        try job.run()
        // Stop one rank once training is under way.
        let deadline = Date().addingTimeInterval(60)
        while Harness.metrics(out).count < 5 && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        let pid = Harness.run("/usr/bin/pgrep", ["-n", "-f", "goml-dist train .*--out \(out)"], timeout: 10).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard let victim = Int32(pid) else {
            job.terminate(); job.waitUntilExit()
            return XCTFail("no rank found to stop")
        }
        let stoppedAt = Date()
        kill(victim, SIGSTOP)
        while job.isRunning && Date().timeIntervalSince(stoppedAt) < timeout + 30 { Thread.sleep(forTimeInterval: 0.2) }
        let elapsed = Date().timeIntervalSince(stoppedAt)
        if job.isRunning { kill(victim, SIGCONT); job.terminate() }
        job.waitUntilExit()
        let stderr = String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self)
        XCTAssertEqual(job.terminationStatus, 4, stderr)
        XCTAssertLessThan(elapsed, timeout + 20, "the job took \(Int(elapsed)) s to end")
        XCTAssertTrue(stderr.contains("without progress") && stderr.contains("--collective-timeout"), stderr)
        // Gone, or a zombie waiting for its reaper: not stopped or running.
        Thread.sleep(forTimeInterval: 1)
        let stat = (try? String(contentsOfFile: "/proc/\(victim)/stat", encoding: .utf8)) ?? ""
        let state = stat.split(separator: ")").last?.split(separator: " ").first ?? "gone"
        XCTAssertTrue(state == "gone" || state == "Z", "the stopped rank was left behind (state \(state))")
    }
}
