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
        let r = Harness.mpirun(np: 4, Harness.tinyTrain(out, steps: 30, extra: ["--checksum-every", "5", "--fault-diverge-rank", "2", "--no-shard"]),
                               timeout: 120)
        XCTAssertFalse(r.timedOut)
        XCTAssertEqual(r.status, 6, r.output)
        XCTAssertTrue(r.stderr.contains("ranks 0 and 2 disagree on the parameter checksum before step 6"), r.output)
        XCTAssertEqual(Harness.losses(out).count, 5, "stopped at the first check after the divergence")
    }

    /// A rank lost during a collective (it starts none and stops responding) leaves the other
    /// waiting; that wait is watched, so the job ends with the timeout message naming the call
    /// instead of a hang. Sharded, during the all-gather: the other's next forward waits for a
    /// parameter bucket; on one host, the other waits to copy the lost rank's slices. DiLoCo,
    /// during the outer all-reduce: the other worker waits for the pseudo-gradient's sum;
    /// overlapped, it goes on into the next step and waits in its first collective instead,
    /// named so. The four jobs run at once (each mostly waits).
    func testARankLostDuringACollectiveEndsTheJobAfterTheTimeout() {
        let diloco = ["--sync-every", "2", "--worker-size", "1", "--fault-lost-outer-rank", "1"]
        let cases: [(what: String, extra: [String], call: String)] = [
            ("all-gather", ["--fault-lost-gather-rank", "1", "--no-shared-memory"], "MPI_Allgatherv (updated parameter buckets) at step 2 without progress"),
            ("one host's parameter copy", ["--fault-lost-gather-rank", "1"],
             "MPI_Barrier (every rank's slices updated, before the parameters are copied) at step 1 without progress"),
            ("outer all-reduce", diloco, "MPI_Iallreduce (DiLoCo's outer pseudo-gradient) at step"),
            ("outer all-reduce, overlapped", diloco + ["--overlap-outer"], "MPI_Allgather at step"),
        ]
        let results = Harness.concurrently(cases) { c in
            Harness.mpirun(np: 2, Harness.tinyTrain(Harness.temporaryDirectory("lost"), extra: ["--collective-timeout", "8"] + c.extra), timeout: 90)
        }
        for (c, r) in zip(cases, results) {
            XCTAssertFalse(r.timedOut, "\(c.what): the job hung with rank 1 lost\n\(r.output)")
            XCTAssertEqual(r.status, 4, "\(c.what)\n\(r.output)")
            XCTAssertTrue(r.stderr.contains("rank 0 (") && r.stderr.contains("waited 8 s in \(c.call)"), "\(c.what)\n\(r.output)")
        }
    }

    /// A rank that stops responding (SIGSTOP) ends the job with the timeout message instead of a hang.
    func testAStoppedRankEndsTheJobAfterTheTimeout() throws {
        let out = Harness.temporaryDirectory("sigstop")
        let timeout = 8.0
        let job = try Harness.start("/usr/bin/mpirun", ["-np", "2"] + Harness.mpirunOptions + [Harness.binary]
                                    + Harness.tinyTrain(out, steps: 1_000_000, logEvery: 100_000, extra: ["--collective-timeout", String(Int(timeout))]))
        // Stop one rank once training is under way.
        let deadline = Date().addingTimeInterval(60)
        while Harness.metrics(out).count < 5 && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        let pid = Harness.run("/usr/bin/pgrep", ["-n", "-f", "goml-dist train .*--out \(out)"], timeout: 10).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard let victim = Int32(pid) else {
            job.process.terminate(); job.process.waitUntilExit()
            return XCTFail("no rank found to stop")
        }
        let stoppedAt = Date()
        kill(victim, SIGSTOP)
        while job.process.isRunning && Date().timeIntervalSince(stoppedAt) < timeout + 30 { Thread.sleep(forTimeInterval: 0.2) }
        let elapsed = Date().timeIntervalSince(stoppedAt)
        if job.process.isRunning { kill(victim, SIGCONT); job.process.terminate() }
        job.process.waitUntilExit()
        let stderr = job.output
        XCTAssertEqual(job.process.terminationStatus, 4, stderr)
        XCTAssertLessThan(elapsed, timeout + 20, "the job took \(Int(elapsed)) s to end")
        XCTAssertTrue(stderr.contains("without progress") && stderr.contains("--collective-timeout"), stderr)
        // Gone, or a zombie waiting for its reaper: not stopped or running.
        Thread.sleep(forTimeInterval: 1)
        let stat = (try? String(contentsOfFile: "/proc/\(victim)/stat", encoding: .utf8)) ?? ""
        let state = stat.split(separator: ")").last?.split(separator: " ").first ?? "gone"
        XCTAssertTrue(state == "gone" || state == "Z", "the stopped rank was left behind (state \(state))")
    }
}
