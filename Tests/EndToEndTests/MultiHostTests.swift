// MultiHostTests: goml-dist across hosts for real, on the test cluster of launch/cluster —
// Linux network namespaces joined by veth links to a bridge on a private subnet, ranks started
// by mpirun through launch/netns-agent (what ssh is on a real cluster), each host with its own
// hostname and private disk at <cluster dir>/local. Every test brings its own cluster up and
// tears it down (addTeardownBlock), also when it fails. Needs root and iproute2.

import Foundation
import GomlIO
import XCTest

final class MultiHostTests: XCTestCase {
    /// 20 steps of tiny, one rank per host: the same per-step losses and gradient norms as
    /// --single (to 1e-5; byte for byte with --reduction exact), the gradient traffic across
    /// host2's link, the checkpoint on both hosts' disks (a replica by default), the same bytes.
    func testTwoHostsOneRankEachMatchSingle() throws {
        let cluster = try multiHostStartCluster()
        try multiHostCheckMatchesSingle(cluster, hostfile: "hostfiles/netns-2hosts", ranks: 2, exact: false)
        try multiHostCheckMatchesSingle(cluster, hostfile: "hostfiles/netns-2hosts", ranks: 2, exact: true)
    }

    /// The same with two ranks per host (shared memory within a host, TCP across).
    func testTwoHostsTwoRanksEachMatchSingle() throws {
        let cluster = try multiHostStartCluster()
        try multiHostCheckMatchesSingle(cluster, hostfile: "hostfiles/netns-2hosts-2slots", ranks: 4, exact: false)
        try multiHostCheckMatchesSingle(cluster, hostfile: "hostfiles/netns-2hosts-2slots", ranks: 4, exact: true)
    }

    /// Two ranks per host, overlapped in 50 kB buckets: the hierarchical reduction sends one
    /// copy of the gradient across host2's link per step, the flat one (default) about two,
    /// and bf16 compression halves the hierarchical one again; hierarchical and flat give the
    /// same losses and gradient norms.
    func testHierarchicalReductionSendsOneCopyPerHost() throws {
        let cluster = try multiHostStartCluster()
        let gradientBytes = 132_224 * 4, steps = 20   // tiny's parameters as float32
        func received(_ extra: [String]) -> Double {
            let before = cluster.receivedBytes("host2")
            let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts-2slots",
                                        trainArguments: multiHostTinyArguments(out: cluster.local + "/run\(extra.count)") + ["--bucket-mb", "0.05"] + extra,
                                        timeout: 180)
            XCTAssertEqual(r.status, 0, "\(extra) failed\n\(r.tail)")
            XCTAssertEqual(r.output.contains("within each host first"), extra.contains("--hierarchical"), r.tail)
            return Double(cluster.receivedBytes("host2") - before) / Double(steps * gradientBytes)
        }
        let hierarchical = received(["--hierarchical"]), flat = received([])
        let compressed = received(["--hierarchical", "--grad-compression", "bf16"])
        XCTAssertGreaterThan(hierarchical, 0.9, "copies per step into host2")
        XCTAssertLessThan(hierarchical, 1.3, "copies per step into host2")
        XCTAssertGreaterThan(flat, 1.6, "flat copies per step into host2")
        XCTAssertLessThan(compressed, 0.7, "bf16 copies per step into host2")
        // The same losses, to float32 rounding (rank 0 wrote them on host1's disk).
        let hierarchicalRun = cluster.disk("host1") + "/run1", flatRun = cluster.disk("host1") + "/run0"
        let hierarchicalLosses = Harness.losses(hierarchicalRun), flatLosses = Harness.losses(flatRun)
        XCTAssertEqual(hierarchicalLosses.count, steps)
        XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(hierarchicalLosses, flatLosses), 1e-5)
        XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(Harness.gradNorms(hierarchicalRun), Harness.gradNorms(flatRun)), 1e-5, "gradient norms")
    }

    /// Overlap hides communication, read from `bench`'s JSON: tiny at batch 32 on two hosts
    /// joined at 1 Gbit/s, 50 kB buckets. The floor, 0.3, is about half the hidden share
    /// measured here (0.58–0.82, eight runs under load average 7–11; its 0.53 MB gradient needs
    /// ≥ 4 ms a direction, its backward ≈ 55 ms here): the last bucket is all that must wait.
    /// After backward (`--no-overlap`) nothing can hide: the same measure gives 0 there, and a
    /// bucket path that started its all-reduces only once backward ended would too.
    func testOverlapHidesCommunicationOnAShapedLink() throws {
        let cluster = try multiHostStartCluster()
        let rate = cluster.script(["rate", "1gbit"], timeout: 60)
        XCTAssertEqual(rate.status, 0, "launch/cluster rate 1gbit failed\n\(rate.tail)")
        func bench(_ extra: [String]) throws -> [String: Any] {
            let json = try cluster.benchJSON(["--config", "tiny", "--batch", "32", "--threads", "1", "--precision", "fp32", "--bucket-mb", "0.05",
                                              "--steps", "10", "--warmup", "3"] + extra)
            XCTAssertEqual(json["overlap"] as? Bool, !extra.contains("--no-overlap"), "\(json)")
            return json
        }
        let overlapped = try bench([]), afterBackward = try bench(["--no-overlap"])
        let hidden = try XCTUnwrap(overlapped["hidden_comm_share"] as? Double), hiddenAfter = try XCTUnwrap(afterBackward["hidden_comm_share"] as? Double)
        XCTAssertGreaterThanOrEqual(hidden, 0.3, "overlapped: \(overlapped)")
        XCTAssertLessThan(hiddenAfter, 0.05, "after backward: \(afterBackward)")
    }

    /// Sharded, the updated parameters are gathered in forward order with at most
    /// --gather-mb-in-flight (8 MB) in flight, so the first layer's buckets do not share the
    /// link with every other: on two hosts joined at 1 Gbit/s (`small`: 43 MB of buckets, all
    /// queued within AdamW's ~25 ms, ≥ 173 ms to gather) at most 8 MB were in flight, and
    /// uncapped nearly all of it. (What it buys, forward's wait for parameters, is a speed
    /// figure: docs/multihost-bench.md.)
    func testShardedGathersGoInForwardOrderWithABoundedWindow() throws {
        let cluster = try multiHostStartCluster()
        let rate = cluster.script(["rate", "1gbit"], timeout: 60)
        XCTAssertEqual(rate.status, 0, "launch/cluster rate 1gbit failed\n\(rate.tail)")
        func peakInFlight(_ extra: [String]) throws -> Double {
            // One timed step: every step gathers the same buckets the same way.
            let json = try cluster.benchJSON(["--config", "small", "--batch", "2", "--threads", "1", "--precision", "fp32", "--steps", "1", "--warmup", "1"] + extra)
            return try XCTUnwrap(json["gather_peak_mb_in_flight"] as? Double, "\(json)")
        }
        let capped = try peakInFlight([]), uncapped = try peakInFlight(["--gather-mb-in-flight", "1000"])
        XCTAssertGreaterThan(capped, 0.5, "MB in flight at the default")
        XCTAssertLessThanOrEqual(capped, 8, "MB in flight at the default")
        XCTAssertGreaterThan(uncapped, 20, "MB in flight uncapped")
    }

    /// A host whose link is down: launch/train names it before starting anything, and mpirun
    /// alone (no check) fails naming it too, both within a bounded time.
    func testHostOffTheNetworkFailsClearly() throws {
        let cluster = try multiHostStartCluster()
        try cluster.setLink("host2", up: false)
        let out = cluster.local + "/run"

        let launched = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: multiHostTinyArguments(out: out), timeout: 90)
        XCTAssertFalse(launched.timedOut, "launch/train hung with host2 off the network\n\(launched.tail)")
        XCTAssertEqual(launched.status, 2, "launch/train did not refuse to start with host2 off the network\n\(launched.tail)")
        XCTAssertTrue(launched.output.contains("host host2 is not reachable"), "no message naming host2:\n\(launched.tail)")
        XCTAssertLessThan(launched.seconds, 30, "the reachability check took \(Int(launched.seconds)) s")

        let raw = cluster.rawMpirun(hostfile: Harness.packageRoot + "/hostfiles/netns-2hosts", ranks: 2,
                                    trainArguments: multiHostTinyArguments(out: out), timeout: 90)
        XCTAssertFalse(raw.timedOut, "mpirun hung with host2 off the network\n\(raw.tail)")
        XCTAssertNotEqual(raw.status, 0, "mpirun succeeded with host2 off the network\n\(raw.tail)")
        XCTAssertTrue(raw.output.contains("connect to host host2"), "mpirun's failure does not name host2:\n\(raw.tail)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.disk("host1") + "/run/latest"), "a checkpoint was written")
    }

    /// A host that drops off the network mid-run ends the job within a bounded time with a
    /// message naming it, and leaves no process behind on any host.
    func testHostLostDuringRunEndsJob() throws {
        try assertLosingHost2EndsTheJob(extra: ["--bucket-mb", "0.05"])   // cut during overlapped buckets
    }

    /// The same in low-communication training, one worker per host syncing every other step
    /// (the outer all-reduce in flight half of the time, overlapped with the next step).
    func testHostLostDuringDiLoCoEndsJob() throws {
        try assertLosingHost2EndsTheJob(extra: ["--sync-every", "2", "--overlap-outer"])
    }

    /// Cuts host2 off once `stepsFirst` steps are recorded (on a link shaped to `rate`, if
    /// given); the header must contain `header`.
    func assertLosingHost2EndsTheJob(extra: [String], rate: String? = nil, stepsFirst: Int = 20, header: String? = nil) throws {
        let cluster = try multiHostStartCluster()
        if let rate {
            let shaped = cluster.script(["rate", rate], timeout: 60)
            XCTAssertEqual(shaped.status, 0, "launch/cluster rate \(rate) failed\n\(shaped.tail)")
        }
        let out = cluster.local + "/run"
        var arguments = multiHostTinyArguments(out: out, steps: 10_000_000)
        arguments += ["--collective-timeout", String(multiHostCollectiveTimeout)] + extra
        let job = try cluster.startTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: arguments)
        // Wait until training is under way on both hosts: steps appear in rank 0's metrics.
        let metrics = cluster.disk("host1") + "/run/metrics.jsonl"
        let deadline = Date().addingTimeInterval(120)
        while multiHostLineCount(metrics) < stepsFirst && job.process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.2)
        }
        guard job.process.isRunning, multiHostLineCount(metrics) >= stepsFirst else {
            let r = job.wait(timeout: 5)
            XCTFail("the job did not get going (exit \(r.status))\n\(r.tail)")
            return
        }
        let cut = Date()
        try cluster.setLink("host2", up: false)
        let r = job.wait(timeout: 120)
        let after = Date().timeIntervalSince(cut)
        XCTAssertFalse(r.timedOut, "the job still ran 120 s after host2 left the network\n\(r.tail)")
        if let header { XCTAssertTrue(r.output.contains(header), "the header lacks '\(header)':\n\(r.tail)") }
        XCTAssertEqual(r.status, 205, "expected mpirun's exit for a lost host\n\(r.tail)")
        XCTAssertLessThan(after, 60, "the job took \(Int(after)) s to end after host2 left the network")
        XCTAssertTrue(r.output.contains("host2") && r.output.contains("lost communication"), "no message naming the lost host2:\n\(r.tail)")
        // Nothing is left running on any host (mpirun on head, daemons and ranks on the hosts).
        Thread.sleep(forTimeInterval: 1)
        for host in ["head", "host1", "host2"] {
            XCTAssertEqual(cluster.processes(on: host), [], "processes left on \(host) after the job ended")
        }
    }

    /// Sharded (the default at np 2) on a link shaped to 10 Mbit/s: tiny's reduce-scatter and
    /// all-gather (≈ 0.26 MB each way each per step) then take ≈ 0.4 s of a step whose compute
    /// is tens of ms, so the cut lands while one of them is in flight; the forward of the next
    /// step waits per bucket for the all-gather. The job still ends with mpirun's message naming
    /// the lost host, within a bounded time, and leaves nothing behind.
    func testHostLostDuringShardedCollectivesEndsJob() throws {
        try assertLosingHost2EndsTheJob(extra: ["--bucket-mb", "0.05"], rate: "10mbit", stepsFirst: 5, header: "sharded over 2 ranks")
    }

    /// A host that goes silent once (every packet it sends is dropped): mpirun ends the job with
    /// 205, launch/train relaunches it (--max-restarts) from the checkpoint on rank 0's host,
    /// and once the host answers again (the relaunch's connections retry until then) the run
    /// resumes there and finishes.
    func testLostHostIsRelaunchedFromTheCheckpoint() throws {
        let cluster = try multiHostStartCluster()
        let out = cluster.local + "/run", steps = 400
        var arguments = multiHostTinyArguments(out: out, steps: steps)
        arguments += ["--collective-timeout", String(multiHostCollectiveTimeout), "--ckpt-every", "20", "--log-every", "1000"]
        let job = try cluster.startTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: arguments, launcherOptions: ["--max-restarts", "2"])
        func waitFor(_ what: String, _ condition: () -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(120)
            while !condition() && job.process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
            if condition() { return true }
            job.process.terminate()
            let r = job.wait(timeout: 30)
            XCTFail("\(what) did not happen (exit \(r.status))\n\(r.tail)")
            return false
        }
        guard waitFor("a checkpoint on host1", { FileManager.default.fileExists(atPath: cluster.disk("host1") + "/run/latest") }) else { return }
        try cluster.setSilent("host2", true)
        guard waitFor("the relaunch", { job.output.contains("restart 1 of 2") }) else { return }
        try cluster.setSilent("host2", false)
        let r = job.wait(timeout: 300)
        XCTAssertFalse(r.timedOut, r.tail)
        XCTAssertEqual(r.status, 0, "the relaunched job failed\n\(r.tail)")
        XCTAssertTrue(r.output.contains("lost communication") && r.output.contains("host2"), r.tail)
        XCTAssertTrue(r.output.contains("the job died (exit 205); restart 1 of 2 from the latest checkpoint in \(out) on host1"), r.tail)
        let resumed = try XCTUnwrap(r.output.range(of: #"resumed from \S+ at step [0-9]+"#, options: .regularExpression).map { String(r.output[$0]) }, r.tail)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(Int(resumed.split(separator: " ").last!)), 20, resumed)
        XCTAssertEqual(try Checkpoint.loadTraining(Checkpoint.resolve(cluster.disk("host1") + "/run")).step, steps)
    }

    /// Resuming across hosts: the checkpoint is on host1's disk alone (rank 0 wrote it, one
    /// replica asked for); rank 0 reads it and broadcasts it, and the resumed run ends as the
    /// uninterrupted one did, bit for bit. host2 never has the output directory.
    func testResumeAcrossHostsReadsRankZerosCheckpoint() throws {
        let cluster = try multiHostStartCluster()
        func train(_ name: String, _ extra: [String]) {
            let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts",
                                        trainArguments: multiHostTinyArguments(out: cluster.local + "/" + name) + ["--ckpt-replicas", "1"] + extra,
                                        timeout: 180)
            XCTAssertEqual(r.status, 0, "\(name) \(extra) failed\n\(r.tail)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.disk("host2") + "/" + name), "host2 has an output directory")
        }
        train("full", [])
        train("run", ["--stop-after", "10"])
        XCTAssertEqual(Harness.losses(cluster.disk("host1") + "/run").count, 10)
        train("run", ["--resume", cluster.local + "/run"])
        let run = cluster.disk("host1") + "/run", full = cluster.disk("host1") + "/full"
        XCTAssertEqual(Harness.lossTexts(run), Harness.lossTexts(full), "per-step losses, bit for bit")
        XCTAssertEqual(try Harness.checkpointTensorBytes(run), try Harness.checkpointTensorBytes(full), "final parameter bytes")
    }

    /// Checkpoint replicas (default on two hosts): both hosts' disks get the same bytes, the
    /// sample generator's state included. A replica that is corrupt (a flipped byte) or
    /// half-written (a truncated state file) is skipped with a warning naming its host, and the
    /// run resumes from the other host's, which its holder broadcasts, and ends as the
    /// uninterrupted run did, bit for bit (--reduction exact).
    func testCorruptReplicaIsSkippedForTheOtherHosts() throws {
        let cluster = try multiHostStartCluster()
        let extra = ["--reduction", "exact", "--ckpt-every", "5", "--sample-every", "5"]
        func train(_ name: String, _ more: [String]) -> Harness.Result {
            let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: multiHostTinyArguments(out: cluster.local + "/" + name) + extra + more,
                                        timeout: 180)
            XCTAssertFalse(r.timedOut, "\(name) \(more) hung\n\(r.tail)")
            XCTAssertEqual(r.status, 0, "\(name) \(more) failed\n\(r.tail)")
            return r
        }
        _ = train("full", [])
        let step10 = Checkpoint.modelFileName(step: 10), state10 = step10.replacingOccurrences(of: ".safetensors", with: ".state.safetensors")
        for (name, spoil) in [("run1", "host1"), ("run2", "host2")] {
            _ = train(name, ["--stop-after", "10"])
            let (spoiled, intact) = (cluster.disk(spoil) + "/" + name, cluster.disk(spoil == "host1" ? "host2" : "host1") + "/" + name)
            for file in [step10, state10, "latest"] {
                XCTAssertEqual(FileManager.default.contents(atPath: spoiled + "/" + file), FileManager.default.contents(atPath: intact + "/" + file),
                               "the replicas of \(file) differ")
            }
            if spoil == "host1" {   // a flipped byte in the model file
                var bytes = try XCTUnwrap(FileManager.default.contents(atPath: spoiled + "/" + step10))
                bytes[bytes.count - 100] ^= 0x10
                try bytes.write(to: URL(fileURLWithPath: spoiled + "/" + step10))
            } else {                // a state file cut short, as a write that never finished
                let bytes = try XCTUnwrap(FileManager.default.contents(atPath: spoiled + "/" + state10))
                try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: spoiled + "/" + state10))
            }
            let r = train(name, ["--resume", cluster.local + "/" + name])
            XCTAssertTrue(r.output.contains("goml-dist: warning: on \(spoil): skipped"), "no warning naming \(spoil):\n\(r.tail)")
            let other = spoil == "host1" ? "host2" : "host1"
            XCTAssertTrue(r.output.contains("resumed from \(other):\(cluster.local)/\(name)/\(step10) at step 10"), r.tail)
            let full = cluster.disk("host1") + "/full"
            XCTAssertEqual(try Harness.checkpointTensorBytes(cluster.disk("host1") + "/" + name), try Harness.checkpointTensorBytes(full),
                           "\(name): final parameter bytes")
            XCTAssertEqual(try Harness.checkpointTensorBytes(cluster.disk("host2") + "/" + name), try Harness.checkpointTensorBytes(full),
                           "\(name): host2's final replica")
        }
    }

    /// Elastic (--min-hosts 1): host2's link goes down for good mid-run. launch/train probes
    /// both hosts, drops host2 naming it, relaunches on host1 alone at world size 1 from the
    /// newest replica, and the run ends with the very bytes of an uninterrupted two-host run
    /// (--reduction exact); the steps redone are at most --ckpt-every.
    func testLostHostFinishesOnTheOtherWithTheSameBytes() throws {
        let cluster = try multiHostStartCluster()
        try elasticRun(cluster, lose: "host2", exact: true)
    }

    /// The same when rank 0's host is the one lost: its replica goes with it, and the run
    /// continues on host2 from host2's replica, with the same bytes.
    func testRankZerosHostLostContinuesFromTheReplica() throws {
        let cluster = try multiHostStartCluster()
        try elasticRun(cluster, lose: "host1", exact: true)
    }

    /// A host's daemon that outlives the job (a cut host's orted, which keeps mpirun's stderr
    /// open) does not hold launch/train: it ends with the job, its error line included.
    /// The agent here leaves a process on each host that keeps the daemon's output for 90 s.
    func testADaemonThatOutlivesTheJobDoesNotHoldTheLauncher() throws {
        let cluster = try multiHostStartCluster()
        let agent = cluster.dir + "/lingering-agent"
        try """
            #!/bin/bash
            host="$1"; shift
            case "$*" in
                *orted*) exec \(Harness.packageRoot)/launch/netns-agent "$host" "(sleep 90 &);" "$@" ;;
                *) exec \(Harness.packageRoot)/launch/netns-agent "$host" "$@" ;;
            esac

            """.write(toFile: agent, atomically: true, encoding: .utf8)
        chmod(agent, 0o755)
        let out = cluster.local + "/run"
        let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts",
                                    trainArguments: multiHostTinyArguments(out: out, steps: 12)
                                        + ["--checksum-every", "5", "--fault-diverge-rank", "1", "--no-shard"],
                                    agent: agent, timeout: 150)
        XCTAssertFalse(r.timedOut, "launch/train hung\n\(r.tail)")
        XCTAssertEqual(r.status, 6, r.tail)
        XCTAssertTrue(r.output.contains("ranks 0 and 1 disagree on the parameter checksum before step 6"), "the rank's error line is lost:\n\(r.tail)")
        XCTAssertLessThan(r.seconds, 60, "launch/train's exit was seen only when the lingering process ended\n\(r.tail)")
    }

    /// Three hosts, one rank each, --batch 12: losing host2 relaunches on host1 and host3 at
    /// world size 2, the largest that keeps the batch; with the default reduction, the run ends
    /// within 0.01 of the uninterrupted run's validation loss. (Losing one of two hosts at the
    /// default reduction, 2 → 1 ranks, was a test of its own: the exact tests above relaunch
    /// 2 → 1, and ShardingTests resumes a sharded run on one rank.)
    func testThreeHostsLoseOneKeepTheLargestWorldSize() throws {
        let cluster = try multiHostStartCluster(hosts: 3)
        let hostfile = cluster.dir + "/three"
        try "host1 slots=1\nhost2 slots=1\nhost3 slots=1\n".write(toFile: hostfile, atomically: true, encoding: .utf8)
        try elasticRun(cluster, lose: "host2", exact: false, hostfile: hostfile, hosts: ["host1", "host2", "host3"], batch: 12)
    }

    /// launch/train --hosts checks that every host has the binary: one at a path on host1's
    /// disk alone is refused before anything starts, naming host2; on host1 alone it runs.
    func testHostWithoutTheBinaryIsNamed() throws {
        let cluster = try multiHostStartCluster()
        try FileManager.default.copyItem(atPath: Harness.binary, toPath: cluster.disk("host1") + "/goml-dist")
        let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: multiHostTinyArguments(out: cluster.local + "/run"),
                                    binary: cluster.local + "/goml-dist", timeout: 90)
        XCTAssertFalse(r.timedOut, r.tail)
        XCTAssertEqual(r.status, 2, r.tail)
        XCTAssertTrue(r.output.contains("launch/train: host host2 has no executable \(cluster.local)/goml-dist"), "no message naming host2:\n\(r.tail)")
        XCTAssertFalse(r.output.contains("host host1"), "host1 has the binary:\n\(r.tail)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.disk("host1") + "/run"), "the job started")
        // On host1 alone the binary is everywhere it is needed (the launcher reads its exit-code
        // table there, as this head node lacks it), and the job runs.
        let hostfile = cluster.dir + "/host1-only"
        try "host1 slots=1\n".write(toFile: hostfile, atomically: true, encoding: .utf8)
        let alone = cluster.launchTrain(hostfile: hostfile, trainArguments: multiHostTinyArguments(out: cluster.local + "/run"),
                                        binary: cluster.local + "/goml-dist", timeout: 120)
        XCTAssertEqual(alone.status, 0, alone.tail)
        XCTAssertEqual(Harness.losses(cluster.disk("host1") + "/run").count, 20, alone.tail)
    }

    /// A hostfile naming a host that does not exist fails at once, naming it, both through
    /// launch/train's check and through mpirun alone.
    func testUnknownHostInHostfileFailsClearly() throws {
        let cluster = try multiHostStartCluster()
        let hostfile = cluster.dir + "/unknown-host"
        try "host1 slots=1\nhost9 slots=1\n".write(toFile: hostfile, atomically: true, encoding: .utf8)
        let out = cluster.local + "/run"

        let launched = cluster.launchTrain(hostfile: hostfile, trainArguments: multiHostTinyArguments(out: out), timeout: 90)
        XCTAssertFalse(launched.timedOut, "launch/train hung on an unknown host\n\(launched.tail)")
        XCTAssertEqual(launched.status, 2, launched.tail)
        XCTAssertTrue(launched.output.contains("host host9 is not reachable") && launched.output.contains("Could not resolve hostname host9"),
                      "no message naming host9:\n\(launched.tail)")

        let raw = cluster.rawMpirun(hostfile: hostfile, ranks: 2, trainArguments: multiHostTinyArguments(out: out), timeout: 90)
        XCTAssertFalse(raw.timedOut, "mpirun hung on an unknown host\n\(raw.tail)")
        XCTAssertNotEqual(raw.status, 0)
        XCTAssertTrue(raw.output.contains("Could not resolve hostname host9"), "mpirun's failure does not name host9:\n\(raw.tail)")
        XCTAssertLessThan(raw.seconds, 30)
    }

    /// Trains tiny on the two hosts from `local/data.txt`, each host reading its own disk, and
    /// expects the set-up error (exit 2) that `problem` causes, not a hang.
    private func trainOnHostData(_ cluster: MultiHostCluster, _ problem: String,
                                 file: StaticString = #filePath, line: UInt = #line) throws -> Harness.Result {
        let arguments = multiHostTinyArguments(out: cluster.local + "/run", data: cluster.local + "/data.txt")
        let r = cluster.launchTrain(hostfile: "hostfiles/netns-2hosts", trainArguments: arguments, timeout: 90)
        XCTAssertFalse(r.timedOut, "the job hung on \(problem)\n\(r.tail)", file: file, line: line)
        XCTAssertEqual(r.status, 2, "expected exit 2 (set-up error)\n\(r.tail)", file: file, line: line)
        return r
    }

    /// Every rank reads the data: a data file on host1's disk alone makes every rank exit with
    /// an error naming host2 and its rank, not a hang.
    func testDataFileMissingOnOneHostNamesIt() throws {
        let cluster = try multiHostStartCluster()
        try FileManager.default.copyItem(atPath: Harness.corpus, toPath: cluster.disk("host1") + "/data.txt")
        let r = try trainOnHostData(cluster, "a data file missing on host2")
        XCTAssertTrue(r.output.contains("rank 1 on host2: data file \(cluster.local)/data.txt not found on host2"),
                      "no error naming host2 and rank 1:\n\(r.tail)")
    }

    /// The same path on both hosts holds files of equal size and different content: the
    /// ranks compare their corpora before training, and the one that differs names its host.
    func testADifferentCorpusOnOneHostNamesIt() throws {
        let cluster = try multiHostStartCluster()
        let corpus = try XCTUnwrap(FileManager.default.contents(atPath: Harness.corpus))
        try Data(corpus.prefix(100_000)).write(to: URL(fileURLWithPath: cluster.disk("host1") + "/data.txt"))
        try Data(corpus.suffix(100_000)).write(to: URL(fileURLWithPath: cluster.disk("host2") + "/data.txt"))
        let r = try trainOnHostData(cluster, "a different corpus on host2")
        XCTAssertTrue(r.output.contains("rank 1 on host2: its corpus differs from rank 0's on host1 (here 1 file, 100000 bytes, fingerprint "),
                      "no error naming host2, rank 1 and host1:\n\(r.tail)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.disk("host1") + "/run/metrics.jsonl"), "training started")
    }

    /// `up` replaces a cluster left behind, `down` removes everything and can be repeated.
    func testClusterUpAndDownLeaveNothingBehind() throws {
        let cluster = try multiHostStartCluster(hosts: 3)
        let again = cluster.script(["up", "2"], timeout: 60)
        XCTAssertEqual(again.status, 0, "up over a running cluster failed\n\(again.tail)")
        XCTAssertEqual(cluster.namespaces().sorted(), ["\(cluster.name)-head", "\(cluster.name)-host1", "\(cluster.name)-host2"])
        for _ in 0..<2 {
            let down = cluster.script(["down"], timeout: 60)
            XCTAssertEqual(down.status, 0, "down failed\n\(down.tail)")
            cluster.assertNothingLeft()
        }
    }
}

// MARK: - Helpers (private to this file)

private let multiHostSubnet = "10.231.0.0/24"

/// --collective-timeout of the runs that lose a host. launch/train sets mpirun's keepalive from
/// it (time timeout/4 = 3 s, interval timeout/8 = 1 s, 3 probes: a 6 s window, against 11 s at
/// the 20 s these tests used), so mpirun notices the lost host and ends the job (205) well
/// before a rank's collective gives up (measured: the job dies about 10.5 s after the cut, 15.5
/// s at 20); a healthy step waits milliseconds.
private let multiHostCollectiveTimeout = 15


/// Harness.tinyTrain without `train`, which launch/train adds.
private func multiHostTinyArguments(out: String, steps: Int = 20, batch: Int = 8, evalBatches: Int = 2, data: String = Harness.corpus) -> [String] {
    Array(Harness.tinyTrain(out, steps: steps, batch: batch, evalBatches: evalBatches, logEvery: steps > 100 ? 1000 : 1, data: [data]).dropFirst())
}

/// A program run on the head's side of the cluster, from the repository (hostfiles are relative to it).
private func multiHostRun(_ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double) -> Harness.Result {
    Harness.run(executable, arguments, timeout: timeout, environment: environment, directory: Harness.packageRoot)
}

private func multiHostLineCount(_ path: String) -> Int {
    ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count
}


/// One test's cluster (launch/cluster with GOML_CLUSTER = name).
private struct MultiHostCluster {
    let name: String
    var dir: String { "/tmp/\(name)-cluster" }
    /// Each host's private disk, as processes on that host see it.
    var local: String { dir + "/local" }
    /// HOST's private disk, as seen from here.
    func disk(_ host: String) -> String { dir + "/disks/" + host }

    func script(_ arguments: [String], timeout: Double) -> Harness.Result {
        multiHostRun("/bin/bash", [Harness.packageRoot + "/launch/cluster"] + arguments, environment: ["GOML_CLUSTER": name], timeout: timeout)
    }

    private func trainCommand(hostfile: String, trainArguments: [String], binary: String = Harness.binary, launcherOptions: [String] = [],
                              agent: String = Harness.packageRoot + "/launch/netns-agent") -> [String] {
        ["run", "--", "/bin/bash", Harness.packageRoot + "/launch/train", "--bin", binary, "--hosts", hostfile,
         "--agent", agent, "--net", multiHostSubnet] + launcherOptions + ["--"] + trainArguments
    }

    /// launch/train --hosts on the head node.
    func launchTrain(hostfile: String, trainArguments: [String], binary: String = Harness.binary,
                     agent: String = Harness.packageRoot + "/launch/netns-agent", timeout: Double) -> Harness.Result {
        script(trainCommand(hostfile: hostfile, trainArguments: trainArguments, binary: binary, agent: agent), timeout: timeout)
    }

    func startTrain(hostfile: String, trainArguments: [String], launcherOptions: [String] = []) throws -> Harness.Job {
        try Harness.start("/bin/bash", [Harness.packageRoot + "/launch/cluster"]
                          + trainCommand(hostfile: hostfile, trainArguments: trainArguments, launcherOptions: launcherOptions),
                          environment: ["GOML_CLUSTER": name], directory: Harness.packageRoot)
    }

    /// mpirun alone on the head node, with the agent and the subnet but no checks.
    func rawMpirun(hostfile: String, ranks: Int, trainArguments: [String], timeout: Double) -> Harness.Result {
        rawMpirun(hostfile: hostfile, ranks: ranks, gomlArguments: ["train"] + trainArguments, timeout: timeout)
    }

    func rawMpirun(hostfile: String, ranks: Int, gomlArguments: [String], timeout: Double) -> Harness.Result {
        script(["run", "--", "mpirun", "-np", String(ranks), "--hostfile", hostfile, "--bind-to", "none",
                "--mca", "plm_rsh_agent", Harness.packageRoot + "/launch/netns-agent",
                "--mca", "btl_tcp_if_include", multiHostSubnet, "--mca", "oob_tcp_if_include", multiHostSubnet,
                "-x", "OPENBLAS_CORETYPE", Harness.binary] + gomlArguments, timeout: timeout)
    }

    /// The JSON last line of `bench ARGS` on host1 and host2, one rank each.
    func benchJSON(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let r = rawMpirun(hostfile: "hostfiles/netns-2hosts", ranks: 2, gomlArguments: ["bench"] + arguments, timeout: 240)
        XCTAssertEqual(r.status, 0, "bench \(arguments) failed\n\(r.tail)", file: file, line: line)
        let json = try Harness.lastJSON(r.output, file: file, line: line)
        XCTAssertEqual(json["ranks"] as? Int, 2, "\(json)", file: file, line: line)
        return json
    }

    func setLink(_ host: String, up: Bool) throws {
        let r = multiHostRun("/usr/bin/env", ["ip", "-n", "\(name)-\(host)", "link", "set", "eth0", up ? "up" : "down"], timeout: 30)
        if r.status != 0 { throw MultiHostError("ip link set eth0 on \(host) failed: \(r.output)") }
    }

    /// Drops every packet HOST sends (a token bucket smaller than any packet), or stops doing so:
    /// to its peers the host is lost, yet its link stays up, so connections retry until it is back.
    func setSilent(_ host: String, _ silent: Bool) throws {
        let tc = silent ? ["qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "8bit", "burst", "10", "latency", "1ms"]
            : ["qdisc", "del", "dev", "eth0", "root"]
        let r = multiHostRun("/usr/bin/env", ["ip", "netns", "exec", "\(name)-\(host)", "tc"] + tc, timeout: 30)
        if r.status != 0 { throw MultiHostError("tc \(tc.joined(separator: " ")) on \(host) failed: \(r.output)") }
    }

    /// Bytes received on HOST's link so far.
    func receivedBytes(_ host: String) -> Int {
        let r = multiHostRun("/usr/bin/env", ["ip", "netns", "exec", "\(name)-\(host)", "cat", "/sys/class/net/eth0/statistics/rx_bytes"], timeout: 30)
        return Int(r.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    func processes(on host: String) -> [String] {
        multiHostRun("/usr/bin/env", ["ip", "netns", "pids", "\(name)-\(host)"], timeout: 30).output
            .split(separator: "\n").map(String.init)
    }

    func namespaces() -> [String] {
        multiHostRun("/usr/bin/env", ["ip", "netns", "list"], timeout: 30).output.split(separator: "\n")
            .compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter { $0.hasPrefix(name + "-") }
    }

    func assertNothingLeft(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(namespaces(), [], "namespaces left behind", file: file, line: line)
        let etc = ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/netns")) ?? []).filter { $0.hasPrefix(name + "-") }
        XCTAssertEqual(etc, [], "/etc/netns entries left behind", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(dir) left behind", file: file, line: line)
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        XCTAssertFalse(mounts.contains(dir), "mounts of \(dir) left behind", file: file, line: line)
    }
}

/// Clusters of earlier test processes that died before their teardown (killed runs).
private func multiHostRemoveAbandonedClusters() {
    let listed = multiHostRun("/usr/bin/env", ["ip", "netns", "list"], timeout: 30).output
    for line in listed.split(separator: "\n") {
        guard let ns = line.split(separator: " ").first, ns.hasPrefix("mh"), ns.hasSuffix("-head"),
              let pid = Int32(ns.dropFirst(2).dropLast(5)), pid != getpid(), kill(pid, 0) != 0 else { continue }
        _ = MultiHostCluster(name: "mh\(pid)").script(["down"], timeout: 120)
    }
}

private struct MultiHostError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension MultiHostTests {
    /// Brings up a fresh cluster for this test, torn down when the test ends however it ends.
    fileprivate func multiHostStartCluster(hosts: Int = 2) throws -> MultiHostCluster {
        guard getuid() == 0 else {
            XCTFail("MultiHostTests need root to create network namespaces (run as root, as CI does)")
            throw MultiHostError("not root")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.binary) else {
            XCTFail("goml-dist binary not found at \(Harness.binary): build it (swift build -c release --product goml-dist) or set GOML_DIST_BIN")
            throw MultiHostError("no binary")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.packageRoot + "/launch/netns-agent") else {
            XCTFail("launch/netns-agent is not executable: mpirun runs it as its rsh agent (chmod +x; git mode 100755)")
            throw MultiHostError("agent not executable")
        }
        multiHostRemoveAbandonedClusters()
        let cluster = MultiHostCluster(name: "mh\(getpid())")
        addTeardownBlock {
            let down = cluster.script(["down"], timeout: 120)
            XCTAssertEqual(down.status, 0, "launch/cluster down failed\n\(down.tail)")
            cluster.assertNothingLeft()
        }
        let up = cluster.script(["up", String(hosts)], timeout: 120)
        guard up.status == 0 else {
            XCTFail("launch/cluster up \(hosts) failed (exit \(up.status)): this machine must let root create network namespaces\n\(up.tail)")
            throw MultiHostError("cluster up failed")
        }
        return cluster
    }

    fileprivate func multiHostCheckMatchesSingle(_ cluster: MultiHostCluster, hostfile: String, ranks: Int, exact: Bool) throws {
        let singleOut = NSTemporaryDirectory() + "goml-multihost-single-\(UUID().uuidString.prefix(8))"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: singleOut) }
        let run = exact ? "run-exact" : "run"
        // allreduce: 50 kB buckets, so several all-reduces overlap backward across the link.
        let reduction = exact ? ["--reduction", "exact"] : ["--reduction", "allreduce", "--bucket-mb", "0.05"]
        let single = multiHostRun(Harness.binary, ["train", "--single"] + multiHostTinyArguments(out: singleOut) + reduction, timeout: 120)
        XCTAssertEqual(single.status, 0, "--single run failed\n\(single.tail)")
        let expected = Harness.losses(singleOut), expectedNorms = Harness.gradNorms(singleOut)
        XCTAssertEqual(expected.count, 20, "--single wrote \(expected.count) losses")
        XCTAssertEqual(expectedNorms.count, 20, "--single wrote \(expectedNorms.count) gradient norms")

        let before = cluster.receivedBytes("host2")
        let r = cluster.launchTrain(hostfile: hostfile, trainArguments: multiHostTinyArguments(out: cluster.local + "/" + run) + reduction, timeout: 180)
        XCTAssertFalse(r.timedOut, "the two-host run (\(reduction[1])) timed out\n\(r.tail)")
        XCTAssertEqual(r.status, 0, "the two-host run (\(reduction[1])) failed\n\(r.tail)")
        XCTAssertTrue(r.output.contains("\(ranks) rank(s) on 2 host(s)"), "not \(ranks) ranks on 2 hosts:\n\(r.tail)")
        XCTAssertTrue(r.output.contains("world \(ranks) rank(s)"), "the job did not run \(ranks) ranks:\n\(r.tail)")

        // Rank 0's files are on host1's disk, and nowhere else.
        let host1Run = cluster.disk("host1") + "/" + run
        let got = Harness.losses(host1Run)
        XCTAssertEqual(got.count, 20, "host1's metrics.jsonl has \(got.count) losses\n\(r.tail)")
        for (step, (a, b)) in zip(got, expected).enumerated() {
            XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "step \(step + 1): loss \(a) on the cluster, \(b) single")
        }
        XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(Harness.gradNorms(host1Run), expectedNorms), 1e-5,
                                 "gradient norms on the cluster against --single")
        if exact {
            XCTAssertEqual(Harness.lossTexts(host1Run), Harness.lossTexts(singleOut),
                           "--reduction exact: the cluster's losses are not byte-identical to --single's")
            XCTAssertEqual(Harness.fieldTexts(host1Run, "grad_norm"), Harness.fieldTexts(singleOut, "grad_norm"),
                           "--reduction exact: the cluster's gradient norms are not byte-identical to --single's")
        }
        let latest = (try? String(contentsOfFile: host1Run + "/latest", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        XCTAssertTrue(latest.hasPrefix("ckpt-"), "no checkpoint named by latest on host1: '\(latest)'")
        XCTAssertTrue(FileManager.default.fileExists(atPath: host1Run + "/" + latest), "checkpoint \(latest) missing on host1")
        // The replica on host2 (its lowest rank wrote it): the same files, byte for byte.
        let host2Run = cluster.disk("host2") + "/" + run
        XCTAssertTrue(r.output.contains("checkpoint replicas on 2 hosts: host1, host2"), r.tail)
        for name in [latest, latest.replacingOccurrences(of: ".safetensors", with: ".state.safetensors"), "latest"] {
            let a = FileManager.default.contents(atPath: host1Run + "/" + name), b = FileManager.default.contents(atPath: host2Run + "/" + name)
            XCTAssertNotNil(b, "no replica of \(name) on host2")
            XCTAssertEqual(a, b, "host2's replica of \(name) differs from host1's")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.disk("head") + "/" + run), "head has an output directory")
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: cluster.local)) ?? [], [],
                       "files landed outside the hosts' private disks")
        // The gradients crossed host2's link: 20 all-reduces of ~0.5 MB each, in each direction.
        let received = cluster.receivedBytes("host2") - before
        XCTAssertGreaterThan(received, 2_000_000, "host2 received only \(received) bytes over its link")
    }
}

extension MultiHostTests {
    /// Trains tiny on `hosts` uninterrupted, then again elastically (--min-hosts 1), cutting
    /// `lose`'s link for good once both runs' replicas hold a checkpoint; checks the drop, the
    /// world size, the resume from a surviving replica, the lost-time report, and the end: the
    /// same parameter bytes (exact) or validation loss within 0.01. Prints the time lost.
    fileprivate func elasticRun(_ cluster: MultiHostCluster, lose: String, exact: Bool, hostfile: String = "hostfiles/netns-2hosts",
                                hosts: [String] = ["host1", "host2"], batch: Int = 8) throws {
        let steps = 300, ckptEvery = 20
        var arguments = multiHostTinyArguments(out: cluster.local + "/full", steps: steps, batch: batch, evalBatches: 8)
        arguments += ["--collective-timeout", String(multiHostCollectiveTimeout), "--ckpt-every", String(ckptEvery)]
        if exact { arguments += ["--reduction", "exact"] }
        let full = cluster.launchTrain(hostfile: hostfile, trainArguments: arguments, timeout: 300)
        XCTAssertEqual(full.status, 0, "the uninterrupted run failed\n\(full.tail)")
        arguments[arguments.firstIndex(of: "--out")! + 1] = cluster.local + "/run"

        let survivors = hosts.filter { $0 != lose }, out = cluster.local + "/run"
        let job = try cluster.startTrain(hostfile: hostfile, trainArguments: arguments, launcherOptions: ["--max-restarts", "2", "--min-hosts", "1"])
        // Cut once a checkpoint is on both disks and the run is past it.
        let survivorLatest = cluster.disk(survivors[0]) + "/run/latest", lostLatest = cluster.disk(lose) + "/run/latest"
        let deadline = Date().addingTimeInterval(120)
        while !(FileManager.default.fileExists(atPath: survivorLatest) && FileManager.default.fileExists(atPath: lostLatest))
                && job.process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
        }
        Thread.sleep(forTimeInterval: 0.5)
        guard job.process.isRunning, FileManager.default.fileExists(atPath: survivorLatest) else {
            let r = job.wait(timeout: 5)
            XCTFail("no checkpoint on \(survivors[0]) before the cut (exit \(r.status))\n\(r.tail)")
            return
        }
        let cut = Date()
        try cluster.setLink(lose, up: false)
        var detected: Double?
        while job.process.isRunning && Date().timeIntervalSince(cut) < 300 {
            if detected == nil && job.output.contains("the job died") { detected = Date().timeIntervalSince(cut) }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let r = job.wait(timeout: 30)
        XCTAssertFalse(r.timedOut, r.tail)
        XCTAssertEqual(r.status, 0, "the elastic run did not finish on \(survivors)\n\(r.tail)")
        XCTAssertTrue(r.output.contains("launch/train: host \(lose) is not reachable through") && r.output.contains("dropped from relaunch 1"),
                      "no line dropping \(lose):\n\(r.tail)")
        let world = survivors.count
        XCTAssertTrue(r.output.contains("relaunch 1 of 2 on \(world) of \(hosts.count) host(s) (\(survivors.joined(separator: " "))), \(world) rank(s)"), r.tail)
        XCTAssertTrue(r.output.contains("world \(world) rank(s)"), r.tail)
        let resumed = try XCTUnwrap(r.output.range(of: #"resumed from \S+ at step [0-9]+"#, options: .regularExpression).map { String(r.output[$0]) }, r.tail)
        XCTAssertTrue(resumed.hasPrefix("resumed from \(survivors[0]):\(out)/ckpt-"), resumed)
        // The lost time: steps redone (the relaunch line and metrics.jsonl agree), at most --ckpt-every.
        let redo = try XCTUnwrap(r.output.range(of: #"[0-9]+ step\(s\) to redo"#, options: .regularExpression).map { Int(r.output[$0].prefix { $0.isNumber })! }, r.tail)
        XCTAssertLessThanOrEqual(redo, ckptEvery, r.tail)
        let survivorRun = cluster.disk(survivors[0]) + "/run"
        let record = try XCTUnwrap(Harness.metrics(survivorRun).first { $0["steps_redone"] != nil }, "no lost-time record in metrics.jsonl")
        XCTAssertEqual((record["steps_redone"] as? NSNumber)?.intValue, redo)
        let recovery = try XCTUnwrap((record["recovery_s"] as? NSNumber)?.doubleValue)
        let probe = r.output.range(of: #"hosts probed in [0-9]+ s"#, options: .regularExpression).map { String(r.output[$0]) } ?? "?"
        print(String(format: "elastic (lose %@, %@): detection %.1f s (cut → the job died), %@, failure → first resumed step %.1f s, %d step(s) redone",
                     lose, exact ? "exact" : "allreduce", detected ?? -1, probe, recovery, redo))

        let fullRun = cluster.disk("host1") + "/full"
        XCTAssertEqual((Harness.metrics(survivorRun).last?["step"] as? NSNumber)?.intValue, steps, "the last step in metrics.jsonl on \(survivors[0])")
        if exact {
            XCTAssertEqual(try Harness.checkpointTensorBytes(survivorRun), try Harness.checkpointTensorBytes(fullRun), "final parameter bytes")
        } else {
            let lastValidation = { (dir: String) in Harness.metrics(dir).last { $0["val_loss"] != nil }?["val_loss"] as? Double }
            let a = try XCTUnwrap(lastValidation(survivorRun)), b = try XCTUnwrap(lastValidation(fullRun))
            XCTAssertLessThanOrEqual(abs(a - b), 0.01, "final validation loss \(a) after the loss, \(b) uninterrupted")
        }
    }
}
