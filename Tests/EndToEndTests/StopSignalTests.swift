// StopSignalTests: SIGTERM (what schedulers send before SIGKILL) under plain mpirun. Every rank
// finishes the same step, rank 0 writes a checkpoint, the job ends with status 10 and one line
// saying how to resume; resuming ends with the parameters of a run that never stopped.

import Foundation
import GomlIO
import XCTest

/// The tiny training every stop test runs: long enough to be signalled mid-run.
func stopTestArguments(_ out: String, steps: Int = 300) -> [String] {
    Harness.tinyTrain(out, steps: steps, logEvery: 50, extra: ["--threads", "1"])
}

/// Steps recorded so far in OUT/metrics.jsonl.
func recordedSteps(_ out: String) -> Int { Harness.fieldTexts(out, "step").count }

/// Waits until OUT has recorded more than `steps` steps, while `running` holds; false if that
/// never happened.
func waitForTraining(_ out: String, past steps: Int = 0, running: () -> Bool, timeout: Double = 120) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while recordedSteps(out) <= steps && running() && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
    return recordedSteps(out) > steps && running()
}

final class StopSignalTests: XCTestCase {
    /// `mpirun -np 2 goml-dist ARGS` in the background, its output in one file.
    func startMpirun(_ arguments: [String], mpiOptions: [String] = []) throws -> Harness.Job {
        try Harness.start("/usr/bin/mpirun", ["-np", "2"] + Harness.mpirunOptions + mpiOptions + [Harness.binary] + arguments)
    }

    /// The ranks of the job writing to `out` (their command lines name it).
    func rankPIDs(_ out: String) -> [Int32] {
        Harness.run("/usr/bin/pgrep", ["-f", "goml-dist train .*--out \(out)( |$)"], timeout: 10).stdout
            .split(separator: "\n").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
            .filter { pid in
                // mpirun's own command line names the output too: keep the goml-dist processes.
                let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
                return exe.hasSuffix("/goml-dist")
            }
    }

    func finish(_ job: Harness.Job, timeout: Double = 120) -> Bool {
        Harness.waitForExit(job.process, started: Date(), timeout: timeout)
    }

    /// SIGTERM to one rank: both stop after the same step with a checkpoint and status 10; the
    /// resumed run's losses and final parameter bytes equal an uninterrupted run's.
    func testSigtermOnOneRankCheckpointsAndResumesExactly() throws {
        let reference = Harness.temporaryDirectory("stopref")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(reference)), "uninterrupted run")

        let out = Harness.temporaryDirectory("stopped")
        let job = try startMpirun(stopTestArguments(out))
        guard waitForTraining(out, running: { job.process.isRunning }) else {
            _ = finish(job, timeout: 5)
            return XCTFail("training did not get going\n\(job.output.suffix(3000))")
        }
        let ranks = rankPIDs(out)
        XCTAssertEqual(ranks.count, 2, "expected the job's two ranks")
        guard let victim = ranks.last else { _ = finish(job, timeout: 5); return }
        kill(victim, SIGTERM)
        XCTAssertFalse(finish(job), "the job did not end after SIGTERM\n\(job.output.suffix(3000))")
        let text = job.output
        XCTAssertEqual(job.process.terminationStatus, 10, text.suffix(3000).description)
        let ckpt = try Checkpoint.loadTraining(Checkpoint.resolve(out))
        XCTAssertGreaterThan(ckpt.step, 0)
        XCTAssertLessThan(ckpt.step, 300, "the run was not stopped mid-way")
        XCTAssertEqual(recordedSteps(out), ckpt.step, "every recorded step is in the checkpoint")
        XCTAssertTrue(text.contains("stopped by SIGTERM after step \(ckpt.step) of 300") && text.contains("--resume \(out)"), text.suffix(3000).description)
        let svg = try XCTUnwrap(String(contentsOfFile: out + "/loss.svg", encoding: .utf8), "a stopped run leaves its curves")
        XCTAssertTrue(svg.contains("class=\"train-smooth\""), "loss.svg holds the training curve")

        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(out) + ["--resume", out]), "resumed run")
        XCTAssertEqual(Harness.lossTexts(out), Harness.lossTexts(reference), "per-step losses, bit for bit")
        XCTAssertTrue(try Harness.checkpointTensorBytes(out) == Harness.checkpointTensorBytes(reference), "final parameter bytes differ from the uninterrupted run's")
    }

    /// DiLoCo (two workers of one rank, outer momentum on, H 7): SIGTERM to one rank between
    /// syncs stops both with a checkpoint of θ_global, the outer momentum and each worker's
    /// state; the resumed run ends with the uninterrupted run's losses and bytes.
    func testSigtermDuringLowCommunicationTrainingResumesExactly() throws {
        let diloco = ["--sync-every", "7", "--worker-size", "1", "--outer-lr", "0.8", "--outer-momentum", "0.5"]
        let reference = Harness.temporaryDirectory("stopref-diloco")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(reference) + diloco), "uninterrupted run")

        let out = Harness.temporaryDirectory("stopped-diloco")
        let job = try startMpirun(stopTestArguments(out) + diloco)
        guard waitForTraining(out, past: 10, running: { job.process.isRunning }) else {
            _ = finish(job, timeout: 5)
            return XCTFail("training did not get going\n\(job.output.suffix(3000))")
        }
        guard let victim = rankPIDs(out).last else { _ = finish(job, timeout: 5); return XCTFail("no rank found") }
        kill(victim, SIGTERM)
        XCTAssertFalse(finish(job), "the job did not end after SIGTERM\n\(job.output.suffix(3000))")
        XCTAssertEqual(job.process.terminationStatus, 10, job.output.suffix(3000).description)
        let ckpt = try Checkpoint.loadTraining(Checkpoint.resolve(out))
        XCTAssertLessThan(ckpt.step, 300, "the run was not stopped mid-way")

        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(out) + diloco + ["--resume", out]), "resumed run")
        XCTAssertEqual(Harness.lossTexts(out), Harness.lossTexts(reference), "per-step losses, bit for bit")
        for name in ["ckpt-0000300.safetensors", "ckpt-0000300.outer.safetensors"] {
            let a = FileManager.default.contents(atPath: reference + "/" + name), b = FileManager.default.contents(atPath: out + "/" + name)
            XCTAssertNotNil(a, name)
            XCTAssertEqual(a, b, "\(name) differs from the uninterrupted run's")
        }
    }

    /// SIGTERM to launch/train: it has mpirun forward SIGUSR1, the job stops with a checkpoint
    /// and the launcher exits 10 without restarting it.
    func testSigtermToTheLauncherStopsTheJob() throws {
        let out = Harness.temporaryDirectory("launcherstop")
        // --bin: the launcher must not build (`swift test` holds the build directory's lock).
        let job = try Harness.start(Harness.packageRoot + "/launch/train",
                               ["--bin", Harness.binary, "--np", "2", "--max-restarts", "2", "--"] + stopTestArguments(out, steps: 100_000).dropFirst())
        let launcher = job.process
        guard waitForTraining(out, running: { launcher.isRunning }) else {
            _ = finish(job, timeout: 5)
            return XCTFail("training did not get going\n\(job.output.suffix(3000))")
        }
        kill(launcher.processIdentifier, SIGTERM)
        XCTAssertFalse(finish(job), "the launcher did not end after SIGTERM\n\(job.output.suffix(3000))")
        XCTAssertEqual(launcher.terminationStatus, 10, job.output.suffix(3000).description)
        let step = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertTrue(job.output.contains("stopped by SIGUSR1 after step \(step) of 100000"), job.output.suffix(3000).description)
        XCTAssertFalse(job.output.contains("restart"), job.output.suffix(3000).description)
    }

    /// SIGTERM to mpirun itself: it forwards SIGTERM to the ranks and kills them
    /// odls_base_sigkill_timeout seconds later (1 by default); with time given, they checkpoint,
    /// but mpirun exits 1 (its status for a job it was told to end), not the ranks' 10; the stop
    /// line names mpirun as the sender.
    /// SIGUSR1 to mpirun (forwarded, nothing killed) stops the job the same way, with status 10.
    func testSignalsToMpirunStopWithACheckpoint() throws {
        let out = Harness.temporaryDirectory("termmpirun")
        let job = try startMpirun(stopTestArguments(out, steps: 100_000), mpiOptions: ["--mca", "odls_base_sigkill_timeout", "5"])
        guard waitForTraining(out, running: { job.process.isRunning }) else {
            _ = finish(job, timeout: 5)
            return XCTFail("training did not get going\n\(job.output.suffix(3000))")
        }
        kill(job.process.processIdentifier, SIGTERM)
        XCTAssertFalse(finish(job), "the job did not end after SIGTERM\n\(job.output.suffix(3000))")
        XCTAssertEqual(job.process.terminationStatus, 1, job.output.suffix(3000).description)
        let step = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertGreaterThan(step, 0)
        XCTAssertTrue(job.output.contains("stopped by SIGTERM from mpirun (a Ctrl-C or a signal to mpirun) after step \(step) of 100000"), job.output.suffix(3000).description)

        let usr1 = try startMpirun(stopTestArguments(out, steps: 100_000) + ["--resume", out])
        guard waitForTraining(out, past: step, running: { usr1.process.isRunning }) else {
            _ = finish(usr1, timeout: 5)
            return XCTFail("the resumed training did not get going\n\(usr1.output.suffix(3000))")
        }
        kill(usr1.process.processIdentifier, SIGUSR1)
        XCTAssertFalse(finish(usr1), "the job did not end after SIGUSR1\n\(usr1.output.suffix(3000))")
        XCTAssertEqual(usr1.process.terminationStatus, 10, usr1.output.suffix(3000).description)
        let later = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertGreaterThan(later, step)
        XCTAssertTrue(usr1.output.contains("stopped by SIGUSR1 after step \(later) of 100000"), usr1.output.suffix(3000).description)
    }
}
