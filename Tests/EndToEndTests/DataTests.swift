// Corpora as users bring them: directories of many files, a separate validation text, and
// every bad input (missing, empty, too short, a host that sees other files, a file that
// shrinks while training), each ending the whole job with one line naming it.

import Foundation
import GomlIO
import XCTest

final class DataTests: XCTestCase {
    func corpusBytes() throws -> [UInt8] {
        [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: Harness.corpus), "missing corpus \(Harness.corpus)"))
    }

    func write(_ bytes: ArraySlice<UInt8>, to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// The corpus cut into ~1,100 files of 997 bytes (so many sequences cross a file boundary),
    /// laid out so only byte-wise order of whole paths rebuilds it ("a.txt" before "a/…"), with
    /// hidden files that must be skipped, and its last piece given as a second --data path.
    func testADirectoryOfManyFilesTrainsLikeTheSameBytesInOneFile() throws {
        let bytes = try corpusBytes()
        let dir = Harness.temporaryDirectory("pieces")
        let piece = 997
        let starts = Array(stride(from: 0, to: bytes.count, by: piece))
        for (i, start) in starts.enumerated() {
            let chunk = bytes[start..<min(start + piece, bytes.count)]
            let path = i == 0 ? dir + "/corpus/a.txt" : i == starts.count - 1 ? dir + "/last.txt" : dir + String(format: "/corpus/a/%05d", i)
            try write(chunk, to: path)
        }
        try write(ArraySlice(Array("hidden, not corpus".utf8)), to: dir + "/corpus/.hidden")
        try write(ArraySlice(Array("hidden, not corpus".utf8)), to: dir + "/corpus/a/.junk")

        let one = Harness.temporaryDirectory("onefile"), many = Harness.temporaryDirectory("manyfiles")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(one, steps: 20, evalEvery: 10, data: [Harness.corpus])), "one file")
        let r = Harness.mpirun(np: 2, Harness.tinyTrain(many, steps: 20, evalEvery: 10, data: [dir + "/corpus", dir + "/last.txt"]))
        Harness.assertSuccess(r, "a directory and a file")
        XCTAssertTrue(r.stdout.contains("(\(starts.count) files, \(bytes.count) bytes, fingerprint "), r.stdout)
        XCTAssertEqual(Harness.lossTexts(one).count, 20)
        XCTAssertEqual(Harness.lossTexts(many), Harness.lossTexts(one), "training losses")
        XCTAssertEqual(Harness.fieldTexts(many, "val_loss"), Harness.fieldTexts(one, "val_loss"), "validation losses")
        XCTAssertEqual(Harness.fieldTexts(one, "val_loss").count, 2)
    }

    /// With --val-data all of --data trains: the first 90% as --data and the last 10% as
    /// --val-data is the default split of the whole file, so the run is the same.
    func testValDataIsTheValidationText() throws {
        let bytes = try corpusBytes()
        let dir = Harness.temporaryDirectory("valdata")
        let cut = Int(0.9 * Double(bytes.count))
        try write(bytes[..<cut], to: dir + "/train.txt")
        try write(bytes[cut...], to: dir + "/val.txt")
        let whole = dir + "/whole", parts = dir + "/parts"
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(whole, steps: 20, evalEvery: 10, data: [Harness.corpus]) + ["--single"]), "whole file")
        let r = Harness.goml(Harness.tinyTrain(parts, steps: 20, evalEvery: 10, data: [dir + "/train.txt"]) + ["--val-data", dir + "/val.txt", "--single"])
        Harness.assertSuccess(r, "--val-data")
        XCTAssertTrue(r.stdout.contains("\(cut) train / \(bytes.count - cut) validation bytes"), r.stdout)
        XCTAssertEqual(Harness.lossTexts(parts), Harness.lossTexts(whole))
        XCTAssertEqual(Harness.fieldTexts(parts, "val_loss"), Harness.fieldTexts(whole, "val_loss"))
        XCTAssertEqual(Harness.fieldTexts(parts, "val_loss").count, 2)
    }

    /// Each error: non-zero exit of the whole job within the timeout, one message naming the problem.
    func expectFailure(_ r: Harness.Result, code: Int32 = 2, message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.timedOut, "hung: \(r.output.suffix(2000))", file: file, line: line)
        XCTAssertEqual(r.status, code, r.output, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(message), "expected '\(message)' in:\n\(r.output.suffix(2000))", file: file, line: line)
        let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
        XCTAssertEqual(errorLines.count, 1, "one error line from the whole job, got:\n\(r.stderr)", file: file, line: line)
    }

    func testBadDataInputsAreNamedWithTheirFix() throws {
        let dir = Harness.temporaryDirectory("baddata")
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
        try write(ArraySlice(Array("only hidden".utf8)), to: dir + "/hidden-only/.notes")
        try write(try corpusBytes()[..<64], to: dir + "/64-bytes.txt")
        let out = dir + "/out"
        let base = ["train", "--config", "tiny", "--steps", "2", "--precision", "fp32", "--out", out]
        let cases: [(data: [String], message: String)] = [
            ([], "no training data: pass --data PATH… (files or directories; the repository ships data/tinyshakespeare.txt)"),
            (["--data", dir + "/empty"], "data directory \(dir)/empty holds no files"),
            (["--data", Harness.corpus, dir + "/hidden-only"], "data directory \(dir)/hidden-only holds no files (hidden names are skipped)"),
            (["--data", Harness.corpus, "--val-data", dir + "/missing.txt"], "data file \(dir)/missing.txt not found on"),
            (["--data", "/dev/null"], "data path /dev/null is neither a regular file nor a directory"),
            (["--data", Harness.corpus, "--val-data", dir + "/64-bytes.txt"], "--val-data \(dir)/64-bytes.txt has 64 bytes but needs at least seq-len + 1 = 65"),
        ]
        // At once: each job mostly waits for mpirun to end it.
        let results = Harness.concurrently(cases) { Harness.mpirun(np: 2, base + $0.data, timeout: 60) }
        for (c, r) in zip(cases, results) { expectFailure(r, message: c.message) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/metrics.jsonl"), "nothing is written before the checks pass")
    }

    /// Two files of equal size and different content under one path per rank (mpirun's
    /// per-rank application contexts): the rank that differs is named with its host.
    func testARankSeeingADifferentCorpusIsNamed() throws {
        let bytes = try corpusBytes()
        let dir = Harness.temporaryDirectory("othercorpus")
        try write(bytes[..<50_000], to: dir + "/a.txt")
        try write(bytes[50_000..<100_000], to: dir + "/b.txt")
        func rank(_ data: String) -> [String] {
            ["-np", "1", Harness.binary] + ["train", "--config", "tiny", "--steps", "2", "--precision", "fp32", "--out", dir + "/out", "--data", data]
        }
        let r = Harness.run("/usr/bin/mpirun", Harness.mpirunOptions + rank(dir + "/a.txt") + [":"] + rank(dir + "/b.txt"), timeout: 60)
        expectFailure(r, message: "rank 1 on ")
        XCTAssertTrue(r.stderr.contains("its corpus differs from rank 0's on") && r.stderr.contains("1 file, 50000 bytes, fingerprint"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/metrics.jsonl"))
        let same = Harness.run("/usr/bin/mpirun", Harness.mpirunOptions + rank(dir + "/a.txt") + [":"] + rank(dir + "/a.txt"), timeout: 60)
        Harness.assertSuccess(same, "the same corpus on both ranks")
    }

    /// A data file cut short while the job reads it: exit code 8 and a line naming the file,
    /// not a SIGBUS crash, and no rank left running.
    func testAFileTruncatedWhileTrainingEndsTheJobClearly() throws {
        let dir = Harness.temporaryDirectory("shrink")
        let data = dir + "/corpus.txt", out = dir + "/out"
        try FileManager.default.copyItem(atPath: Harness.corpus, toPath: data)
        let truncated = expectation(description: "truncated")
        DispatchQueue.global().async {
            let deadline = Date().addingTimeInterval(60)
            while (FileManager.default.contents(atPath: out + "/metrics.jsonl")?.count ?? 0) == 0 && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.05)
            }
            truncate(data, 1000)
            truncated.fulfill()
        }
        let r = Harness.mpirun(np: 2, ["train", "--config", "tiny", "--steps", "1000000", "--eval-every", "0", "--log-every", "1",
                                      "--precision", "fp32", "--data", data, "--out", out], timeout: 120)
        wait(for: [truncated], timeout: 1)
        XCTAssertFalse(r.timedOut, "the job went on after its data shrank\n\(r.output.suffix(2000))")
        XCTAssertEqual(r.status, 8, r.output.suffix(2000).description)
        XCTAssertTrue(r.stderr.contains("data file \(data) shrank while training"), r.stderr)
        XCTAssertFalse(r.output.contains("Bus error") || r.output.contains("signal 7"), r.output.suffix(2000).description)
    }

    /// The checkpoint records the corpus's fingerprint: resuming on other data is refused,
    /// unless --allow-data-change, which warns and continues.
    func testResumeOnADifferentCorpusIsRefused() throws {
        let bytes = try corpusBytes()
        let dir = Harness.temporaryDirectory("resumedata")
        try write(bytes[..<200_000], to: dir + "/first.txt")
        try write(bytes[200_000..<400_000], to: dir + "/second.txt")
        let out = dir + "/out"
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(out, steps: 3, evalEvery: 10, data: [dir + "/first.txt"]) + ["--single"]), "first run")
        let fingerprint = try XCTUnwrap(Checkpoint.loadTraining(Checkpoint.resolve(out)).dataFingerprint)
        XCTAssertEqual(fingerprint.count, 16)
        let refused = Harness.goml(Harness.tinyTrain(out, steps: 6, evalEvery: 10, data: [dir + "/second.txt"]) + ["--single", "--resume", out])
        expectFailure(refused, message: "was trained on data with fingerprint \(fingerprint), but this run's is ")
        XCTAssertTrue(refused.stderr.contains("--allow-data-change"), refused.stderr)
        let allowed = Harness.goml(Harness.tinyTrain(out, steps: 6, evalEvery: 10, data: [dir + "/second.txt"]) + ["--single", "--resume", out, "--allow-data-change"])
        Harness.assertSuccess(allowed, "--allow-data-change")
        XCTAssertTrue(allowed.stderr.contains("warning: checkpoint") && allowed.stderr.contains("continuing (--allow-data-change)"), allowed.stderr)
        XCTAssertEqual(try Checkpoint.loadTraining(Checkpoint.resolve(out)).step, 6)
        XCTAssertNotEqual(try Checkpoint.loadTraining(Checkpoint.resolve(out)).dataFingerprint, fingerprint)
        let same = Harness.goml(Harness.tinyTrain(out, steps: 8, evalEvery: 10, data: [dir + "/second.txt"]) + ["--single", "--resume", out])
        Harness.assertSuccess(same, "resuming on the corpus the checkpoint names")
    }
}
