// What a newcomer sees: the README's `./launch/train` demo learns (validation loss falls at
// every evaluation), prints a sample, and leaves a plot; progress is live on a terminal only.

import Foundation
import XCTest

final class DemoTests: XCTestCase {
    func testTheDemoLearnsPrintsASampleAndDrawsItsCurves() throws {
        let dir = Harness.temporaryDirectory("demo")
        // --bin: the binary launch/test built (building again here would wait on swift test's lock).
        let r = Harness.run(Harness.packageRoot + "/launch/train", ["--bin", Harness.binary], timeout: 900, directory: dir)
        Harness.assertSuccess(r, "launch/train")
        XCTAssertTrue(r.stderr.contains("launch/train: 4 rank(s)") && r.stderr.contains("data/tinyshakespeare.txt"),
                      "the plan is printed before starting: \(r.stderr.prefix(2000))")
        let validation = Harness.fieldTexts(dir + "/out/demo", "val_loss").compactMap(Double.init)
        XCTAssertGreaterThanOrEqual(validation.count, 5, "the demo evaluates several times")
        for (earlier, later) in zip(validation, validation.dropFirst()) {
            XCTAssertLessThan(later, earlier, "validation loss must fall at every evaluation: \(validation)")
        }
        XCTAssertLessThan(validation.last ?? 9, 2.0, "the demo should reach a validation loss under 2.0: \(validation)")
        let sample = try XCTUnwrap(r.stdout.components(separatedBy: "sample from ").last)
        XCTAssertTrue(sample.contains("ROMEO:") && sample.count > 250, "a sample follows the run: \(sample.prefix(500))")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/demo/loss.svg"), "the demo draws its loss curves")
        XCTAssertTrue(r.stdout.contains("out/demo/loss.svg") && r.stdout.contains("--resume out/demo"),
                      "the user is told where things are and what to run next")
    }

    /// `script` gives the command a pseudo-terminal, as a user's shell would.
    private func onTerminal(_ command: String) -> Harness.Result {
        Harness.run("/usr/bin/script", ["-qefc", command, "/dev/null"], timeout: 300)
    }

    func testProgressIsLiveOnATerminalAndPlainWhenPiped() {
        let dir = Harness.temporaryDirectory("progress")
        let train = "\(Harness.binary) train --config tiny --batch 4 --steps 40 --log-every 20 --eval-every 0 --eval-batches 2 --precision fp32 --data \(Harness.corpus)"
        let live = "\u{1B}[K", eta = "| ETA "
        let single = onTerminal(train + " --single --out \(dir)/a")
        Harness.assertSuccess(single, "train on a terminal")
        XCTAssertTrue(single.stdout.contains(live) && single.stdout.contains(eta), single.stdout.suffix(1500).description)

        // mpirun's ranks write to mpirun, not to the terminal: rank 0 asks what mpirun's output is.
        let mpi = onTerminal("mpirun -np 2 \(Harness.mpirunOptions.joined(separator: " ")) \(train) --out \(dir)/b")
        Harness.assertSuccess(mpi, "mpirun train on a terminal")
        XCTAssertTrue(mpi.stdout.contains(live) && mpi.stdout.contains(eta), mpi.stdout.suffix(1500).description)

        let piped = Harness.goml(train.split(separator: " ").dropFirst().map(String.init) + ["--single", "--out", dir + "/c"])
        Harness.assertSuccess(piped, "train piped")
        XCTAssertFalse(piped.stdout.contains(live) || piped.stdout.contains(eta), "plain lines when piped: \(piped.stdout)")
        XCTAssertTrue(piped.stdout.contains("step     40/40"), piped.stdout)

        let off = onTerminal(train + " --single --no-progress --out \(dir)/d")
        Harness.assertSuccess(off, "train --no-progress on a terminal")
        XCTAssertFalse(off.stdout.contains(eta), off.stdout)
    }
}
