// Ctrl-C, as a terminal sends it (SIGINT to the whole foreground process group): `train
// --single` and `launch/train` (mpirun under it) stop after a step with a checkpoint, exit 10
// and name the signal; resuming ends with the bytes of a run never stopped. A bare mpirun
// passes Ctrl-C on as SIGTERM, and a tiny run stops the same way within the second it allows.
// A second Ctrl-C within 5 s ends the process at once.

import Foundation
import GomlIO
import XCTest

final class InterruptTests: XCTestCase {
    /// The process, in a process group (session) of its own, as a shell's foreground job is.
    struct Job {
        let pid: pid_t
        let log: String
        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
    }

    func start(_ executable: String, _ arguments: [String]) throws -> Job {
        let log = Harness.temporaryDirectory("interrupt") + "/log"
        // setsid: a new session and process group, whose leader is the command itself.
        let shell = "exec setsid \(([executable] + arguments).map { "'\($0)'" }.joined(separator: " ")) > '\(log)' 2>&1 < /dev/null"
        var pid: pid_t = 0
        let words: [String] = ["/bin/sh", "-c", shell]
        let argv = words.map { strdup($0) } + [nil]
        let envp = Harness.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, envp) == 0 else { throw XCTSkip("cannot start \(executable)") }
        return Job(pid: pid, log: log)
    }

    /// Waits for the job's exit status (nil past `timeout`, the job then killed).
    func exitStatus(_ job: Job, timeout: Double = 120) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while waitpid(job.pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(-job.pid, SIGKILL); waitpid(job.pid, &status, 0); return nil }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + status & 0x7f
    }

    /// Ctrl-C: SIGINT to every process of the job's process group.
    func interrupt(_ job: Job) { kill(-job.pid, SIGINT) }

    func waitForTraining(_ out: String, _ job: Job, past steps: Int = 0) -> Bool {
        let deadline = Date().addingTimeInterval(120)
        while recordedSteps(out) <= steps && kill(job.pid, 0) == 0 && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return recordedSteps(out) > steps
    }

    /// The final model file's bytes of a run in `out`.
    func finalModel(_ out: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: try Checkpoint.resolve(out)))
    }

    /// Interrupts `command` (given its --out) mid-run, checks the stop, resumes it and compares
    /// the end with `reference`'s.
    /// `status` nil: the exit status is mpirun's own (1 after it passed on a Ctrl-C), not ours.
    func assertCtrlCStopsAndResumesExactly(_ command: (String) -> (String, [String]), reference: String, named: String, status: Int32? = 10,
                                           file: StaticString = #filePath, line: UInt = #line) throws {
        let out = Harness.temporaryDirectory("interrupted")
        let (executable, arguments) = command(out)
        let job = try start(executable, arguments)
        guard waitForTraining(out, job) else { return XCTFail("training did not get going\n\(job.output.suffix(3000))", file: file, line: line) }
        interrupt(job)
        let exit = exitStatus(job)
        if let status { XCTAssertEqual(exit, status, job.output.suffix(3000).description, file: file, line: line) }
        XCTAssertNotEqual(exit, 0, job.output.suffix(3000).description, file: file, line: line)
        let step = try Checkpoint.loadTraining(Checkpoint.resolve(out)).step
        XCTAssertTrue(job.output.contains("stopped by \(named) after step \(step) of 300"), job.output.suffix(3000).description, file: file, line: line)
        let resumed = try start(executable, arguments + ["--resume", out])
        XCTAssertEqual(exitStatus(resumed), 0, resumed.output.suffix(3000).description, file: file, line: line)
        XCTAssertEqual(Harness.lossTexts(out), Harness.lossTexts(reference), "losses of the resumed run", file: file, line: line)
        XCTAssertEqual(try finalModel(out), try finalModel(reference), "the final model's bytes", file: file, line: line)
    }

    func testCtrlCStopsSingleWithACheckpointAndResumesExactly() throws {
        let reference = Harness.temporaryDirectory("interrupt-ref")
        Harness.assertSuccess(Harness.goml(stopTestArguments(reference) + ["--single"]), "uninterrupted run")
        try assertCtrlCStopsAndResumesExactly({ out in (Harness.binary, stopTestArguments(out) + ["--single"]) }, reference: reference,
                                              named: "SIGINT (Ctrl-C)")
    }

    /// Under launch/train the launcher turns Ctrl-C into SIGUSR1 for mpirun, which passes it to
    /// every rank (Ctrl-C to a bare mpirun would kill the ranks a second after SIGTERM).
    func testCtrlCStopsLaunchTrainWithACheckpointAndResumesExactly() throws {
        let reference = Harness.temporaryDirectory("interrupt-mpi-ref")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(reference)), "uninterrupted run")
        try assertCtrlCStopsAndResumesExactly({ out in
            (Harness.packageRoot + "/launch/train", ["--bin", Harness.binary, "--np", "2", "--"] + stopTestArguments(out).dropFirst())
        }, reference: reference, named: "SIGUSR1")
    }

    /// A bare mpirun passes Ctrl-C to its ranks as SIGTERM and kills them a second later: a tiny
    /// model's step and checkpoint fit in that second, and the stop names where it came from.
    func testCtrlCToABareMpirunStopsATinyRunWithACheckpointNamingMpirun() throws {
        let reference = Harness.temporaryDirectory("interrupt-bare-ref")
        Harness.assertSuccess(Harness.mpirun(np: 2, stopTestArguments(reference)), "uninterrupted run")
        try assertCtrlCStopsAndResumesExactly({ out in
            ("/usr/bin/mpirun", ["-np", "2"] + Harness.mpirunOptions + [Harness.binary] + stopTestArguments(out))
        }, reference: reference, named: "SIGTERM from mpirun (a Ctrl-C or a signal to mpirun)", status: nil)
    }

    func testASecondCtrlCEndsAtOnce() throws {
        let out = Harness.temporaryDirectory("interrupt-twice")
        let job = try start(Harness.binary, stopTestArguments(out, steps: 100_000) + ["--single", "--config", "small", "--batch", "4", "--log-every", "1"])
        guard waitForTraining(out, job) else { return XCTFail("training did not get going\n\(job.output.suffix(3000))") }
        interrupt(job)
        Thread.sleep(forTimeInterval: 0.2)
        interrupt(job)
        XCTAssertEqual(exitStatus(job, timeout: 10), 130, job.output.suffix(3000).description)
        XCTAssertTrue(job.output.contains("interrupted again: exiting at once"), job.output.suffix(3000).description)
    }
}
