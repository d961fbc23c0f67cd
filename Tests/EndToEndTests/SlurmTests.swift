// SlurmTests: launch/slurm/train.sbatch on a real Slurm cluster — munged, slurmctld and slurmd
// on this machine, brought up by launch/slurm/local-cluster (one node, this machine's CPUs) in
// a directory of its own and taken down again by every test, also when it fails, leaving no
// daemon running. Needs root (the scripts install slurm-wlm and munge when missing).

import Foundation
import GomlIO
import XCTest

final class SlurmTests: XCTestCase {
    static let script = Harness.packageRoot + "/launch/slurm/train.sbatch"
    static let steps = 300

    /// The uninterrupted run the stopped jobs must reproduce (plain mpirun, 2 ranks of 1 thread,
    /// as the jobs below get from Slurm).
    static let reference: String = {
        let out = Harness.temporaryDirectory("slurmref")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(out, steps: steps)), "uninterrupted run")
        return out
    }()

    struct Cluster {
        let directory: String
        /// Nodes above one are network-namespace hosts, and Slurm's commands run on their head.
        var nodes = 1
        var environment: [String: String] {
            // A port of its own, so a cluster a developer has up on the default one is left alone.
            ["SLURM_CONF": directory + "/slurm.conf", "GOML_SLURM_DIR": directory, "GOML_SLURM_PORT": "6837",
             "GOML_DIST_BIN": Harness.binary]
        }

        func run(_ tool: String, _ arguments: [String], timeout: Double = 60) -> Harness.Result {
            if nodes == 1 { return Harness.run("/usr/bin/" + tool, arguments, timeout: timeout, environment: environment) }
            return Harness.run(Harness.packageRoot + "/launch/cluster", ["run", "head", "--", "/usr/bin/" + tool] + arguments,
                               timeout: timeout, environment: environment.merging(["GOML_CLUSTER": "gomlslurm"]) { $1 })
        }

        /// Submits the example script with `options` for sbatch and `training` for goml-dist train;
        /// returns the job id, or the run's result when sbatch failed.
        func submit(_ options: [String], _ training: [String], log: String) -> (Int?, Harness.Result) {
            let r = run("sbatch", ["--parsable", "--output", log] + options + [SlurmTests.script] + training)
            return (Int(r.stdout.split(separator: ";").first?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""), r)
        }

        /// The job's state and exit code as scontrol shows them ("RUNNING", "0:0").
        func state(_ job: Int) -> (state: String, exitCode: String) {
            let text = run("scontrol", ["show", "job", "-o", String(job)], timeout: 30).stdout
            func field(_ name: String) -> String {
                guard let r = text.range(of: " \(name)=") else { return "" }
                return String(text[r.upperBound...].prefix { $0 != " " && $0 != "\n" })
            }
            return (field("JobState"), field("ExitCode"))
        }

        static let ended: Set<String> = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"]

        /// Submits and waits for the job to end (polling: sbatch --wait checks only every few
        /// seconds); returns its exit code as scontrol shows it ("0:0"), or sbatch's failure.
        func submitAndWait(_ options: [String], _ training: [String], log: String) -> (job: Int?, exitCode: String, sbatch: Harness.Result) {
            let (job, r) = submit(options, training, log: log)
            guard let job else { return (nil, "", r) }
            return (job, wait(job, for: Self.ended).exitCode, r)
        }

        /// Waits until the job's state is one of `states`; returns the last state seen.
        func wait(_ job: Int, for states: Set<String>, timeout: Double = 180) -> (state: String, exitCode: String) {
            let deadline = Date().addingTimeInterval(timeout)
            var current = state(job)
            while !states.contains(current.state) && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.3)
                current = state(job)
            }
            return current
        }

        /// Waits until every node is idle (no job running or completing on it).
        func waitForIdleNodes(timeout: Double = 60) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let states = Set(run("sinfo", ["-h", "-N", "-o", "%t"], timeout: 30).stdout.split(separator: "\n").map(String.init))
                if states == ["idle"] { return true }
                Thread.sleep(forTimeInterval: 0.3)
            }
            return false
        }

        /// Waits until the job has trained past `steps` steps in `out` while it runs.
        func waitForTraining(_ job: Int, _ out: String, past steps: Int = 0, timeout: Double = 120) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while recordedSteps(out) <= steps && Date() < deadline {
                if !["PENDING", "CONFIGURING", "RUNNING", ""].contains(state(job).state) { return false }
                Thread.sleep(forTimeInterval: 0.2)
            }
            return recordedSteps(out) > steps && state(job).state == "RUNNING"
        }
    }

    /// Brings a cluster up in a fresh directory; the teardown takes it down and checks that no
    /// Slurm or munge process is left.
    func startCluster(nodes: Int = 1) throws -> Cluster {
        let cluster = Cluster(directory: Harness.temporaryDirectory("slurm"), nodes: nodes)
        let script = Harness.packageRoot + "/launch/slurm/local-cluster"
        addTeardownBlock {
            let down = Harness.run(script, ["down"], timeout: 120, environment: cluster.environment)
            XCTAssertEqual(down.status, 0, "local-cluster down failed\n\(down.output)")
            let left = Harness.run("/usr/bin/pgrep", ["-a", "-f", "\(cluster.directory)|slurmstepd"], timeout: 10).stdout
                .split(separator: "\n").filter { !$0.contains("pgrep") }
            XCTAssertEqual(left, [], "processes left after local-cluster down")
            let namespaces = Harness.run("/usr/sbin/ip", ["netns", "list"], timeout: 10).stdout
            XCTAssertFalse(namespaces.contains("gomlslurm-"), "network namespaces left after local-cluster down: \(namespaces)")
        }
        let up = Harness.run(script, ["up", String(nodes)], timeout: 900, environment: cluster.environment)
        guard up.status == 0 else { throw ClusterError(message: "local-cluster up failed (exit \(up.status))\n\(up.output)") }
        return cluster
    }

    struct ClusterError: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// The example script as submitted: 2 ranks on the node, no hostfile, threads from
    /// --cpus-per-task, the job named in the header; then 1 task of 1 CPU on this 2-core node
    /// (without Slurm goml-dist would give that rank both cores).
    func testBatchScriptTrainsInTheAllocation() throws {
        let cluster = try startCluster()
        let host = localHostName()
        let out = Harness.temporaryDirectory("slurmrun")
        let log = out + "/job.log"
        let (submitted, exitCode, sbatch) = cluster.submitAndWait([], trainingWithoutThreads(out, steps: 20), log: log)
        guard let job = submitted else { return XCTFail("sbatch failed\n\(sbatch.output)") }
        XCTAssertEqual(exitCode, "0:0", "the job failed\n\(text(log).suffix(3000))")
        let output = text(log)
        XCTAssertTrue(output.contains("world 2 rank(s), 1 thread(s) per rank"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("slurm job \(job): 1 node(s) \(host), 2 task(s), 1 cpu(s) per task"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("done: 20 steps"), output.suffix(3000).description)
        XCTAssertEqual(try Checkpoint.loadTraining(Checkpoint.resolve(out)).step, 20)
        XCTAssertEqual(Harness.losses(out).count, 20)

        let one = Harness.temporaryDirectory("slurmone")
        let (oneJob, oneExit, oneRun) = cluster.submitAndWait(["--ntasks-per-node=1", "--cpus-per-task=1"], trainingWithoutThreads(one, steps: 5), log: one + "/job.log")
        XCTAssertNotNil(oneJob, oneRun.output)
        XCTAssertEqual(oneExit, "0:0", text(one + "/job.log").suffix(3000).description)
        XCTAssertTrue(text(one + "/job.log").contains("world 1 rank(s), 1 thread(s) per rank"), text(one + "/job.log").suffix(3000).description)
    }

    /// `scancel --batch --signal=TERM` mid-run: the script has the ranks stop after the same step,
    /// rank 0 checkpoints, the job ends with status 10 without requeueing; a second sbatch of the
    /// same script resumes from OUT/latest and ends with an uninterrupted run's losses and bytes.
    func testTermMidRunCheckpointsAndASecondJobResumesExactly() throws {
        let reference = Self.reference
        let cluster = try startCluster()
        let out = Harness.temporaryDirectory("slurmterm")
        let log = out + "/job.log"
        let training = Array(stopTestArguments(out, steps: Self.steps).dropFirst())
        let (submitted, result) = cluster.submit([], training, log: log)
        guard let job = submitted else { return XCTFail("sbatch failed\n\(result.output)") }
        guard cluster.waitForTraining(job, out) else {
            return XCTFail("the job did not get going: \(cluster.state(job))\n\(text(log).suffix(3000))")
        }
        let cancel = cluster.run("scancel", ["--batch", "--signal=TERM", String(job)])
        XCTAssertEqual(cancel.status, 0, cancel.output)
        let ended = cluster.wait(job, for: Cluster.ended)
        XCTAssertEqual(ended.exitCode, "10:0", "job state \(ended.state)\n\(text(log).suffix(3000))")
        let step = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertGreaterThan(step, 0)
        XCTAssertLessThan(step, Self.steps, "the job was not stopped mid-run")
        let output = text(log)
        XCTAssertTrue(output.contains("stopped by SIGUSR1 after step \(step) of \(Self.steps)"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("submit this script again"), output.suffix(3000).description)
        XCTAssertFalse(output.contains("requeueing"), output.suffix(3000).description)

        let (again, resumedExit, resumed) = cluster.submitAndWait([], training, log: out + "/job2.log")
        XCTAssertNotNil(again, resumed.output)
        XCTAssertEqual(resumedExit, "0:0", text(out + "/job2.log").suffix(3000).description)
        XCTAssertTrue(text(out + "/job2.log").contains("resumes from \(out)/ckpt-"), text(out + "/job2.log").suffix(3000).description)
        XCTAssertEqual(Harness.lossTexts(out), Harness.lossTexts(reference), "per-step losses, bit for bit")
        XCTAssertTrue(try Harness.checkpointTensorBytes(out) == Harness.checkpointTensorBytes(reference), "final parameter bytes differ from the uninterrupted run's")
    }

    /// The time-limit warning (--signal=B:USR1@120, sent here with scancel): the run stops with a
    /// checkpoint, the job requeues itself and, started again, resumes to the uninterrupted
    /// run's parameters. (A requeued job waits 120 s to start; the test lets it start at once.)
    func testTimeLimitWarningRequeuesAndTheJobResumes() throws {
        let reference = Self.reference
        let cluster = try startCluster()
        let out = Harness.temporaryDirectory("slurmrequeue")
        let log = out + "/job.log"
        let (submitted, result) = cluster.submit([], Array(stopTestArguments(out, steps: Self.steps).dropFirst()), log: log)
        guard let job = submitted else { return XCTFail("sbatch failed\n\(result.output)") }
        guard cluster.waitForTraining(job, out) else {
            return XCTFail("the job did not get going: \(cluster.state(job))\n\(text(log).suffix(3000))")
        }
        XCTAssertEqual(cluster.run("scancel", ["--batch", "--signal=USR1", String(job)]).status, 0)
        let requeued = cluster.wait(job, for: ["PENDING", "COMPLETED", "FAILED"])
        XCTAssertEqual(requeued.state, "PENDING", "the job did not requeue\n\(text(log).suffix(3000))")
        let step = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertLessThan(step, Self.steps, "the job was not stopped mid-run")
        // The requeued job's first run ends on the node (completing) before it may start again,
        // and not within the second its credential was revoked: slurmd compares those times in
        // whole seconds and would refuse the new start ("job credential revoked"). Slurm's own
        // 120 s delay before a requeued job starts is what normally keeps them apart.
        XCTAssertTrue(cluster.waitForIdleNodes(), "the node did not become idle after the requeue")
        Thread.sleep(forTimeInterval: 2)
        XCTAssertEqual(cluster.run("scontrol", ["update", "JobId=\(job)", "StartTime=now"]).status, 0)
        let ended = cluster.wait(job, for: Cluster.ended)
        let output = text(log)
        XCTAssertEqual(ended.state, "COMPLETED", output.suffix(3000).description)
        XCTAssertTrue(output.contains("stopped by SIGUSR1 after step \(step) of \(Self.steps)"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("requeueing job \(job)"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("job \(job) (start 1) resumes from \(out)/ckpt-"), output.suffix(3000).description)
        XCTAssertTrue(try Harness.checkpointTensorBytes(out) == Harness.checkpointTensorBytes(reference), "final parameter bytes differ from the uninterrupted run's")
    }

    /// Two nodes (network-namespace hosts, one slurmd each), one rank per node: mpirun starts
    /// the second node's daemon through Slurm (srun), the ranks talk over TCP between the hosts,
    /// and the run ends with the parameters of the same run on one machine.
    func testTwoNodesOneRankEach() throws {
        let single = Harness.temporaryDirectory("slurmtwo-ref")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(single, steps: 20)), "the run on one machine")
        let cluster = try startCluster(nodes: 2)
        let out = Harness.temporaryDirectory("slurmtwo")
        let log = out + "/job.log"
        let (submitted, exitCode, sbatch) = cluster.submitAndWait(["--nodes=2", "--ntasks-per-node=1"],
                                                                  Array(stopTestArguments(out, steps: 20).dropFirst()), log: log)
        guard let job = submitted else { return XCTFail("sbatch failed\n\(sbatch.output)") }
        XCTAssertEqual(exitCode, "0:0", "the job failed\n\(text(log).suffix(3000))")
        let output = text(log)
        XCTAssertTrue(output.contains("slurm job \(job): 2 node(s) host[1-2], 2 task(s), 1 cpu(s) per task"), output.suffix(3000).description)
        XCTAssertTrue(text(cluster.directory + "/slurmd-host2.log").contains("launch task StepId=\(job)."), "no step of the job ran on host2")
        XCTAssertTrue(try Harness.checkpointTensorBytes(out) == Harness.checkpointTensorBytes(single), "final parameter bytes differ from the run on one machine")
    }

    /// Elastic inside the allocation (GOML_MAX_RESTARTS, --no-kill): host2 drops off the
    /// network mid-run; the script probes both nodes with srun, drops host2, relaunches on host1
    /// alone from the newest checkpoint and ends with the bytes of the run on one machine
    /// (--reduction exact).
    func testLostNodeRelaunchesOnTheRestOfTheAllocation() throws {
        let single = Harness.temporaryDirectory("slurmelastic-ref")
        // The default --collective-timeout (300 s) leaves mpirun's keepalive (about 25 s) to end the job.
        let exact = ["--reduction", "exact", "--ckpt-every", "20"], steps = 150
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(single, steps: steps) + exact), "the run on one machine")
        let cluster = try startCluster(nodes: 2)
        let out = Harness.temporaryDirectory("slurmelastic")
        let log = out + "/job.log"
        let (submitted, result) = cluster.submit(["--nodes=2", "--ntasks-per-node=1", "--export=ALL,GOML_MAX_RESTARTS=2"],
                                                 Array(stopTestArguments(out, steps: steps).dropFirst()) + exact, log: log)
        guard let job = submitted else { return XCTFail("sbatch failed\n\(result.output)") }
        guard cluster.waitForTraining(job, out, past: 30) else {
            return XCTFail("the job did not get going: \(cluster.state(job))\n\(text(log).suffix(3000))")
        }
        let down = Harness.run("/usr/sbin/ip", ["-n", "gomlslurm-host2", "link", "set", "eth0", "down"], timeout: 30)
        XCTAssertEqual(down.status, 0, down.output)
        // The job stays COMPLETING until Slurm gives up on host2's cleanup: its script has ended then.
        let ended = cluster.wait(job, for: Cluster.ended.union(["COMPLETING"]), timeout: 400)
        let output = text(log)
        XCTAssertEqual(ended.exitCode, "0:0", "job state \(ended.state)\n\(output.suffix(3000))")
        XCTAssertTrue(output.contains("train.sbatch: node host2 does not answer"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("relaunch 1 of 2 on 1 of 2 node(s) (host1), 1 rank(s)"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("world 1 rank(s)"), output.suffix(3000).description)
        XCTAssertTrue(try Harness.checkpointTensorBytes(out) == Harness.checkpointTensorBytes(single), "final parameter bytes differ from the run on one machine")
    }

    /// Training options without --threads, so goml-dist takes its threads from Slurm.
    func trainingWithoutThreads(_ out: String, steps: Int) -> [String] {
        var arguments = Array(stopTestArguments(out, steps: steps).dropFirst())
        if let i = arguments.firstIndex(of: "--threads") { arguments.removeSubrange(i...(i + 1)) }
        return arguments
    }

    func localHostName() -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        return String(cString: name).split(separator: ".").first.map(String.init) ?? ""
    }
}
